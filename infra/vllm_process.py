"""One vLLM OpenAI server process: start, wait for `/health`, watch, stop; and the few HTTP calls the node makes.

The argv comes from the caller (agents/node/vllm_args.py builds it) and runs with the interpreter of vLLM's own
environment (infra/vllm_env.py). The process gets its own process group and its output goes to a log file, whose
last lines become the reason when it fails. `stop()` sends SIGTERM to the group, waits, then SIGKILLs the group and
any descendant that left it: no process stays behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import psutil

from infra.errors import LoraplaneError, TransientError
from infra.processes import _pdeathsig_preexec, _signal_group

TAIL_LINES = 40
# Variables of the control plane's interpreter that would make vLLM's interpreter import the wrong packages.
_DROPPED_ENV = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
# Whatever the deployment says: nothing is fetched from a hub at run time (weights are in the node cache) and vLLM
# does not report usage to its authors.
_FIXED_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "PYTHONUNBUFFERED": "1",
}
# The CPU build keeps the KV cache in RAM, VLLM_CPU_KVCACHE_SPACE GiB of it (its default takes a large share of the
# host); a tiny model needs far less.
CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "CUDA_VISIBLE_DEVICES": ""}


class VllmError(LoraplaneError):
    pass


class VllmExited(VllmError):
    """The server exited (or never became ready); `last_lines` is the end of its log, for fail_reason."""

    def __init__(self, message: str, code: int | None, last_lines: str) -> None:
        super().__init__(message + (f"; last lines of its log:\n{last_lines}" if last_lines else ""))
        self.code = code
        self.last_lines = last_lines


class VllmApiError(VllmError):
    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"vLLM answered {status} to {method} {path}: {body[:2000]}")
        self.status = status
        self.body = body


def vllm_environment(extra: Mapping[str, str], *, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The child's whole environment: `base` (default: ours) less Python-path variables, the fixed settings, then
    `extra` (CUDA_VISIBLE_DEVICES, VLLM_ALLOW_RUNTIME_LORA_UPDATING, CPU_ENV, ...)."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in _DROPPED_ENV}
    return {**env, **_FIXED_ENV, **extra}


def tail(path: Path, n: int = TAIL_LINES) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            data = f.read()
    except FileNotFoundError:
        return ""
    return "\n".join(data.decode("utf-8", errors="replace").splitlines()[-n:])


async def _group_ends(pgid: int, timeout: float) -> bool:  # noqa: ASYNC109
    """Whether the process group is gone within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while _signal_group(pgid, 0):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.1)
    return True


async def stop_orphans(records: Path, *, grace: float = 20.0) -> list[int]:
    """Stop the servers written down under `records` that are still running (their node agent died and a new one
    starts): SIGTERM to each group, SIGKILL after `grace`, every descendant reaped. The pids stopped.

    A node agent's engines get SIGTERM when it dies (PR_SET_PDEATHSIG), but an engine may take long to exit (draining
    requests, or hung), and one that outlives its agent would share its devices with the engine the new agent starts:
    so the new agent calls this before it starts any."""
    stopped: list[int] = []
    for path, process in _recorded(records):
        if process is not None:
            descendants: list[psutil.Process] = []
            with contextlib.suppress(psutil.Error):
                descendants = process.children(recursive=True)
            pgid = process.pid
            _signal_group(pgid, signal.SIGTERM)
            _signal_group(pgid, signal.SIGCONT)  # a stopped process acts on SIGTERM only once it runs again
            if not await _group_ends(pgid, grace):
                _signal_group(pgid, signal.SIGKILL)
            for child in descendants:
                with contextlib.suppress(psutil.Error):
                    child.kill()
            await asyncio.to_thread(psutil.wait_procs, [process, *descendants], timeout=5)
            await _group_ends(pgid, 5.0)
            stopped.append(pgid)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return stopped


def _recorded(records: Path) -> list[tuple[Path, psutil.Process | None]]:
    """Each record under `records`, with its server when that still runs (the same pid and start time)."""
    found: list[tuple[Path, psutil.Process | None]] = []
    for path in sorted(records.glob("*.json")) if records.is_dir() else []:
        try:
            record = json.loads(path.read_text())
            process = psutil.Process(int(record["pid"]))
            same = abs(process.create_time() - float(record["create_time"])) < 0.01
        except (OSError, ValueError, KeyError, TypeError, psutil.Error):
            same = False  # gone (or unreadable): nothing to stop
        found.append((path, process if same else None))
    return found


class VllmServer:
    """One `python -m vllm.entrypoints.openai.api_server` process listening on host:port."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        port: int,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        host: str = "127.0.0.1",
        tail_lines: int = TAIL_LINES,
        record: Path | None = None,
    ) -> None:
        self.argv = list(argv)
        self.record = record  # where the running server is written down for `stop_orphans`
        self.port = port
        self.host = host
        self.log_path = log_path
        self.env = vllm_environment(env or {})
        self.tail_lines = tail_lines
        self.base_url = f"http://{host}:{port}"
        self._proc: asyncio.subprocess.Process | None = None
        self._descendants: set[int] = set()

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.returncode

    def last_log_lines(self, n: int | None = None) -> str:
        return tail(self.log_path, self.tail_lines if n is None else n)

    async def start(self, *, ready_timeout: float = 600.0) -> float:
        """Spawn the server and wait until `/health` answers 200; the seconds that took.

        Raises VllmExited (with the log's last lines) when it exits first or is not ready in time; in both cases
        nothing of it is left running."""
        if self._proc is not None and self._proc.returncode is None:
            raise VllmError(f"vLLM is already running (pid {self._proc.pid})")
        began = time.monotonic()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            out.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(self.argv)}\n".encode())
            out.flush()
            self._proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
                preexec_fn=_pdeathsig_preexec(),
            )
        self._descendants = set()
        self._write_record(self._proc.pid)
        try:
            await self._wait_healthy(ready_timeout)
        except BaseException:
            await self.stop(grace=5.0)
            raise
        return time.monotonic() - began

    async def _wait_healthy(self, timeout: float) -> None:  # noqa: ASYNC109
        proc = self._proc
        assert proc is not None
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=2.0) as client:
            while True:
                if proc.returncode is not None:
                    raise VllmExited(f"vLLM exited with code {proc.returncode} before it was ready", *self._ended())
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{self.base_url}/health")).status_code == 200:
                        return
                self._remember_descendants()
                if time.monotonic() > deadline:
                    raise VllmExited(f"vLLM was not ready within {timeout:g}s", None, self.last_log_lines())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 0.5)

    def _ended(self) -> tuple[int | None, str]:
        return self.returncode, self.last_log_lines()

    async def wait_exit(self) -> VllmExited:
        """Wait until the server exits by itself (a crash, a kill), clean up what it left, and describe it."""
        proc = self._proc
        if proc is None:
            raise VllmError("vLLM was not started")
        self._remember_descendants()
        code = await proc.wait()
        await self._reap_group(proc.pid, grace=2.0)
        self._remove_record()
        return VllmExited(f"vLLM exited with code {code}", *self._ended())

    async def stop(self, *, grace: float = 20.0) -> int | None:
        """SIGTERM the group, wait up to `grace` seconds, SIGKILL the group and every descendant; the exit code."""
        proc = self._proc
        if proc is None:
            return None
        self._remember_descendants()
        if proc.returncode is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                _signal_group(proc.pid, signal.SIGKILL)
                await proc.wait()
        await self._reap_group(proc.pid, grace=grace)
        self._remove_record()
        return proc.returncode

    def _write_record(self, pid: int) -> None:
        if self.record is None:
            return
        with contextlib.suppress(psutil.Error, OSError):
            started = psutil.Process(pid).create_time()
            self.record.parent.mkdir(parents=True, exist_ok=True)
            self.record.write_text(json.dumps({"pid": pid, "create_time": started, "port": self.port}))

    def _remove_record(self) -> None:
        if self.record is not None:
            with contextlib.suppress(FileNotFoundError):
                self.record.unlink()

    def _remember_descendants(self) -> None:
        """vLLM starts an engine-core process (and may start more); remember them in case one leaves the group."""
        if self._proc is None or self._proc.returncode is not None:
            return
        with contextlib.suppress(psutil.Error):
            self._descendants |= {p.pid for p in psutil.Process(self._proc.pid).children(recursive=True)}

    async def _reap_group(self, pgid: int, grace: float) -> None:
        """After the leader exited: let its group end on the SIGTERM, then SIGKILL what is left of it."""
        if not await _group_ends(pgid, grace):
            _signal_group(pgid, signal.SIGKILL)
        leftovers = []
        for pid in self._descendants:
            with contextlib.suppress(psutil.Error):
                process = psutil.Process(pid)
                process.kill()
                leftovers.append(process)
        await asyncio.to_thread(psutil.wait_procs, leftovers, timeout=5)
        # A killed process stays in the group until its new parent reaps it.
        await _group_ends(pgid, 5.0)

    async def __aenter__(self) -> VllmServer:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


class VllmClient:
    """The calls a node agent makes to one vLLM server."""

    def __init__(self, base_url: str, *, timeout: float = 60.0, api_key: str | None = None) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        self._http = httpx.AsyncClient(base_url=base_url, timeout=timeout, headers=headers)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> VllmClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def health(self) -> bool:
        try:
            return (await self._http.get("/health")).status_code == 200
        except httpx.HTTPError:
            return False

    async def load_lora_adapter(self, name: str, path: str | Path) -> None:
        """Needs VLLM_ALLOW_RUNTIME_LORA_UPDATING=True in the server's environment."""
        await self._call("POST", "/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(path)})

    async def unload_lora_adapter(self, name: str) -> None:
        await self._call("POST", "/v1/unload_lora_adapter", {"lora_name": name})

    async def models(self) -> list[str]:
        """The served model ids: the base model's name, then (as far as vLLM lists them) the loaded adapters."""
        body = await self._call("GET", "/v1/models")
        return [str(m["id"]) for m in body.get("data", [])]

    async def model_cards(self) -> dict[str, Any]:
        """`/v1/models` as vLLM answers it (adapters carry a `parent`)."""
        return await self._call("GET", "/v1/models")

    async def completion(self, model: str, prompt: str, max_tokens: int, temperature: float = 0.0) -> str:
        """The text of one completion; `model` is the served model name or a loaded adapter's name."""
        body = await self._call(
            "POST",
            "/v1/completions",
            {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": temperature},
        )
        return str(body["choices"][0]["text"])

    async def _call(self, method: str, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            response = await self._http.request(method, path, json=payload)
        except httpx.TransportError as exc:
            raise TransientError(f"vLLM did not answer {method} {path}: {exc!r}") from exc
        if response.status_code >= 400:
            raise VllmApiError(method, path, response.status_code, response.text)
        if not response.content or not response.headers.get("content-type", "").startswith("application/json"):
            return {}
        body = response.json()
        return body if isinstance(body, dict) else {"data": body}
