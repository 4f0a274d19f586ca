"""A stand-in for vLLM's OpenAI server that answers at once: for the gateway's tests and its capacity benchmark.

It takes vLLM's command line (`python -m vllm.entrypoints.openai.api_server --served-model-name M --host H --port P
...`, the rest ignored), so a node agent can run it as its "vLLM" (LORAPLANE_VLLM_PYTHON naming a script that runs
this file), and it honours VLLM_API_KEY on /v1 as vLLM does. Answers are deterministic: the text is made of the
model's name and the prompt's words, one token a word, with OpenAI's usage. It refuses to load an adapter whose
name holds `unloadable`. A prompt holding the word `slow` streams
a token every 0.2 s. Beside the OpenAI routes (/health, /v1/models, /v1/completions, /v1/chat/completions,
/v1/load_lora_adapter, /v1/unload_lora_adapter) it has:
  GET  /_stub/stats  requests seen, streams cancelled by their client, the last request's headers
  POST /_stub/close  stop listening and drop every connection (the process stays), as an engine that went away
                     while its node did not notice
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

from aiohttp import web

SLOW_TOKEN_S = 0.2


class Engine:
    def __init__(self, served: str, api_key: str | None) -> None:
        self.served = served
        self.api_key = api_key
        self.adapters: set[str] = set()
        self.requests = 0
        self.cancelled = 0
        self.last_headers: dict[str, str] = {}
        self.runner: web.AppRunner | None = None

    def models(self) -> list[str]:
        return [self.served, *sorted(self.adapters)]


def _error(status: int, message: str) -> web.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": status}}
    return web.json_response(body, status=status)


@web.middleware
async def _auth(request: web.Request, handler: Any) -> web.StreamResponse:
    engine: Engine = request.app["engine"]
    if engine.api_key and request.path.startswith("/v1"):
        if request.headers.get("Authorization") != f"Bearer {engine.api_key}":
            return web.json_response({"error": "Unauthorized"}, status=401)
    return await handler(request)


def _text(model: str, prompt: str, max_tokens: int) -> list[str]:
    words = [model, "says", *prompt.split()]
    return [f" {words[i % len(words)]}" for i in range(max_tokens)]


async def health(request: web.Request) -> web.Response:
    return web.Response(text="")


async def models(request: web.Request) -> web.Response:
    engine: Engine = request.app["engine"]
    data = [{"id": engine.served, "object": "model", "owned_by": "stub", "parent": None, "root": engine.served}]
    data += [{"id": a, "object": "model", "owned_by": "stub", "parent": engine.served} for a in sorted(engine.adapters)]
    return web.json_response({"object": "list", "data": data})


async def load(request: web.Request) -> web.Response:
    body = await request.json()
    if "unloadable" in body["lora_name"]:  # as vLLM refuses an adapter it cannot use
        return _error(400, f"Loading lora {body['lora_name']} failed: the stub refuses it")
    request.app["engine"].adapters.add(body["lora_name"])
    return web.Response(text=f"Success: LoRA adapter '{body['lora_name']}' added successfully.")


async def unload(request: web.Request) -> web.Response:
    body = await request.json()
    engine: Engine = request.app["engine"]
    if body["lora_name"] not in engine.adapters:
        return _error(404, f"The lora adapter '{body['lora_name']}' cannot be found.")
    engine.adapters.discard(body["lora_name"])
    return web.Response(text="Success")


async def generate(request: web.Request) -> web.StreamResponse:
    engine: Engine = request.app["engine"]
    engine.requests += 1
    engine.last_headers = dict(request.headers)
    body = await request.json()
    model = body.get("model")
    if model not in engine.models():
        return _error(404, f"The model `{model}` does not exist.")
    chat = request.path.endswith("/chat/completions")
    if chat:
        prompt = " ".join(str(m.get("content", "")) for m in body.get("messages", []))
    else:
        prompt = str(body.get("prompt", ""))
    tokens = _text(model, prompt, int(body.get("max_tokens") or 16))
    usage = {"prompt_tokens": len(prompt.split()) + 1, "completion_tokens": len(tokens)}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    ident, created = f"cmpl-{engine.requests}", int(time.time())
    kind = "chat.completion" if chat else "text_completion"
    if not body.get("stream"):
        text = "".join(tokens)
        choice: dict[str, Any] = {"index": 0, "finish_reason": "length"}
        choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
        answer = {"id": ident, "object": kind, "created": created, "model": model, "choices": [choice], "usage": usage}
        return web.json_response(answer)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
    await response.prepare(request)
    delay = SLOW_TOKEN_S if "slow" in prompt.split() else 0.0
    try:
        for i, token in enumerate(tokens):
            delta: dict[str, Any] = {"index": 0, "finish_reason": "length" if i == len(tokens) - 1 else None}
            delta.update({"delta": {"content": token}} if chat else {"text": token})
            chunk = {"id": ident, "object": f"{kind}.chunk", "created": created, "model": model, "choices": [delta]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            if delay:
                await asyncio.sleep(delay)
        if (body.get("stream_options") or {}).get("include_usage"):
            final = {"id": ident, "object": f"{kind}.chunk", "created": created, "model": model, "choices": []}
            final["usage"] = usage
            await response.write(f"data: {json.dumps(final)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
    except (ConnectionResetError, asyncio.CancelledError):
        engine.cancelled += 1
        raise
    return response


async def stats(request: web.Request) -> web.Response:
    engine: Engine = request.app["engine"]
    return web.json_response(
        {
            "requests": engine.requests,
            "cancelled": engine.cancelled,
            "adapters": sorted(engine.adapters),
            "headers": engine.last_headers,
        }
    )


async def close(request: web.Request) -> web.Response:
    """Stop listening and close every open connection, once this answer is sent."""
    runner = request.app["engine"].runner
    assert runner is not None
    asyncio.get_running_loop().call_later(0.1, lambda: asyncio.ensure_future(runner.cleanup()))
    return web.Response(text="closing")


def make_app(engine: Engine) -> web.Application:
    app = web.Application(middlewares=[_auth])
    app["engine"] = engine
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/load_lora_adapter", load)
    app.router.add_post("/v1/unload_lora_adapter", unload)
    app.router.add_post("/v1/completions", generate)
    app.router.add_post("/v1/chat/completions", generate)
    app.router.add_get("/_stub/stats", stats)
    app.router.add_post("/_stub/close", close)
    return app


async def serve(served: str, host: str, port: int) -> None:
    engine = Engine(served, os.environ.get("VLLM_API_KEY"))
    runner = engine.runner = web.AppRunner(make_app(engine), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    print(f"stub engine {served!r} on http://{host}:{port}", flush=True)
    await asyncio.Event().wait()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-m", dest="module")  # vllm.entrypoints.openai.api_server, as the node runs it
    parser.add_argument("--served-model-name", default="stub")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args, _ = parser.parse_known_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(args.served_model_name, args.host, args.port))


if __name__ == "__main__":
    main(sys.argv[1:])
