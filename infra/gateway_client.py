"""A client of loraplane's own inference gateway (`/v1/completions`), for the platform's processes that call models
(the evaluation agent). It asks what an evaluation needs of vLLM: token ids, next-token log-probabilities,
completions.

A client made with `deployment` pins every request to that deployment (the gateway's `X-Loraplane-Deployment`
header: an adapter is loaded there, not on another deployment of its base model) and checks that each answer says it
came from there.

What a retry can cure is retried here (an adapter still loading answers 503 with `Retry-After`; a key made a moment
ago is not known to the gateway yet: 401; an engine that broke off: 502/504); anything else raises `GatewayRefused`
with the gateway's message.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import httpx

from infra.errors import LoraplaneError
from infra.secrets import SecretBox
from streams.deployments import DEPLOYMENT_HEADER

log = logging.getLogger(__name__)

_RETRIED = frozenset({401, 429, 502, 503, 504})


class GatewayRefused(LoraplaneError):
    """The gateway refused a request for a reason a retry does not cure (or retries ran out)."""


@dataclass(frozen=True)
class InternalKey:
    key_id: str
    key: str
    key_hash: str


def internal_api_key(box: SecretBox, purpose: str) -> InternalKey:
    """The API key of one of the platform's own processes, derived from the master key (api.auth's format,
    `lp_<key_id>_<secret>`): every process holding the master key derives the same one, so nothing stores it."""
    key_id = "sys" + box.derive(f"api-key-id:{purpose}")[:21]
    key = f"lp_{key_id}_{box.derive(f'api-key:{purpose}')}"
    return InternalKey(key_id, key, hashlib.sha256(key.encode()).hexdigest())


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_token_ids: list[int] | None
    top_logprobs: list[dict[str, Any]] | None


class GatewayClient:
    def __init__(
        self,
        base_url: str,
        key: str,
        *,
        deployment: str | None = None,
        timeout_s: float = 600.0,
        attempts: int = 30,
    ) -> None:
        self._url = f"{base_url.rstrip('/')}/v1/completions"
        self._headers = {"Authorization": f"Bearer {key}"}
        self._deployment = deployment
        if deployment is not None:
            self._headers[DEPLOYMENT_HEADER] = deployment
        self._attempts = attempts
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=10.0))

    async def close(self) -> None:
        await self._http.aclose()

    async def tokens(self, model: str, text: str, *, special: bool) -> list[int]:
        """`text` as the engine of `model` tokenizes it (with its special tokens, e.g. BOS, or without)."""
        body = {
            "model": model,
            "prompt": text,
            "max_tokens": 1,
            "temperature": 0,
            "return_token_ids": True,
            "add_special_tokens": special,
        }
        answer = await self.complete(body)
        if answer.prompt_token_ids is None:
            raise GatewayRefused("the engine returned no prompt_token_ids")
        return answer.prompt_token_ids

    async def next_token_logprobs(self, model: str, token_ids: list[int], target: int) -> dict[str, Any]:
        """The engine's log-probabilities at the position after `token_ids`, `target`'s among them (vLLM's
        `logprob_token_ids`, keyed `token_id:<id>`): the raw log-softmax of the model, whatever is sampled.

        Not `prompt_logprobs`, which would give every position at once: vLLM's CPU LoRA kernels (0.32) fail on it when
        another request shares the step (the LoRA logits wrapper sizes its batch by requests, not positions), and
        that failure kills the engine."""
        body = {
            "model": model,
            "prompt": token_ids,
            "max_tokens": 1,
            "temperature": 0,
            "logprobs": 1,
            "logprob_token_ids": [target],
            "return_tokens_as_token_ids": True,
        }
        answer = await self.complete(body)
        if not answer.top_logprobs:
            raise GatewayRefused("the engine returned no logprobs")
        return answer.top_logprobs[0]

    async def generate(self, model: str, prompt: str, *, max_tokens: int, temperature: float) -> str:
        body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": temperature}
        return (await self.complete(body)).text

    async def complete(self, body: dict[str, Any]) -> Completion:
        delay = 0.5
        for attempt in range(1, self._attempts + 1):
            try:
                response = await self._http.post(self._url, json=body, headers=self._headers)
            except httpx.TransportError as exc:
                if attempt == self._attempts:
                    raise GatewayRefused(f"the gateway did not answer: {exc}") from None
                log.warning("gateway: %s; trying again in %.1fs", exc, delay)
            else:
                if response.status_code == 200:
                    answered_by = response.headers.get(DEPLOYMENT_HEADER)
                    if self._deployment is not None and answered_by != self._deployment:
                        raise GatewayRefused(
                            f"{body.get('model')}: answered by deployment {answered_by!r}, "
                            f"not {self._deployment!r} it was pinned to"
                        )
                    choice = response.json()["choices"][0]
                    logprobs = choice.get("logprobs") or {}
                    return Completion(choice["text"], choice.get("prompt_token_ids"), logprobs.get("top_logprobs"))
                message = _message(response)
                if response.status_code not in _RETRIED or attempt == self._attempts:
                    raise GatewayRefused(f"{body.get('model')}: the gateway answered {response.status_code}: {message}")
                retry_after = response.headers.get("retry-after")
                if retry_after and retry_after.isdigit():
                    delay = max(delay, min(float(retry_after), 10.0))
                log.info("gateway answered %s (%s); trying again in %.1fs", response.status_code, message, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
        raise AssertionError("unreachable")


def _message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
    except ValueError:
        pass
    return response.text[:500]
