"""A small supervisor for child processes (asyncio).

Each child runs in its own process group with its output appended to `data_dir/logs/<name>.log`.
On Linux every child gets `PR_SET_PDEATHSIG=SIGTERM`, so it dies with the supervisor even when the
supervisor is SIGKILLed. `data_dir/run/processes.json` always lists the live children by name,
plus the supervisor itself under "supervisor".
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 10.0
# A child that stayed up this long starts again from the initial backoff after its next exit.
BACKOFF_RESET_AFTER_S = 60.0

_PR_SET_PDEATHSIG = 1
_DUMP_WAIT_S = 2.0  # for a child's stack dump, after its dump_signal


@dataclass
class ChildSpec:
    name: str
    argv: list[str]
    # The child's whole environment, as for `subprocess`; None inherits the supervisor's.
    env: dict[str, str] | None = None
    restart: bool = True
    cwd: Path | None = None
    # Sent to a child that does not stop within its grace, before SIGKILL, so that it writes where it waits into its
    # log (SIGQUIT for a Go program: the runtime dumps every goroutine's stack and exits).
    dump_signal: signal.Signals | None = None


class ChildFailed(Exception):
    """A child that must not be restarted (restart=False) exited."""

    def __init__(self, name: str, code: int, last_log_lines: str) -> None:
        super().__init__(f"{name} exited with code {code}")
        self.name = name
        self.code = code
        self.last_log_lines = last_log_lines

    def __str__(self) -> str:
        text = f"{self.name} exited with code {self.code}"
        if self.last_log_lines:
            text += f"; last lines of its log:\n{self.last_log_lines}"
        return text


@dataclass
class _Child:
    spec: ChildSpec
    proc: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    backoff: float = BACKOFF_INITIAL_S
    monitor: asyncio.Task[None] | None = None
    restart_task: asyncio.Task[None] | None = None


def _pdeathsig_preexec() -> Callable[[], None] | None:
    """A preexec_fn asking the kernel to SIGTERM the child when its parent dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        # The parent may have died between fork() and prctl(): then nobody will signal us.
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def _signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to a process group; False when the group no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


class Supervisor:
    def __init__(self, data_dir: Path, log: Callable[[str], None]) -> None:
        self.data_dir = data_dir.resolve()
        self.log = log
        self.logs_dir = self.data_dir / "logs"
        self.run_dir = self.data_dir / "run"
        self.pid_file = self.run_dir / "processes.json"
        self._children: dict[str, _Child] = {}  # in start order
        self._exits: asyncio.Queue[tuple[str, asyncio.subprocess.Process | None, int]] | None = None
        self._stopping = False
        self._preexec = _pdeathsig_preexec()

    # ----------------------------------------------------------------------------------- queries

    def log_path(self, name: str) -> Path:
        return self.logs_dir / f"{name}.log"

    def pid(self, name: str) -> int | None:
        child = self._children.get(name)
        if child is None or child.proc is None or child.proc.returncode is not None:
            return None
        return child.proc.pid

    def pids(self) -> dict[str, int]:
        """Live children by name, in start order."""
        return {name: pid for name in self._children if (pid := self.pid(name)) is not None}

    def last_log_lines(self, name: str, n: int = 20) -> str:
        path = self.log_path(name)
        try:
            with path.open("rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - 64 * 1024))
                data = f.read()
        except FileNotFoundError:
            return ""
        lines = data.decode("utf-8", errors="replace").splitlines()
        return "\n".join(lines[-n:]) if n > 0 else ""

    async def wait_exit(self, name: str) -> int:
        """Wait until the current process of `name` exits; its exit code."""
        child = self._children[name]
        if child.proc is None:
            raise RuntimeError(f"{name} is not running")
        return await child.proc.wait()

    # ---------------------------------------------------------------------------------- commands

    async def start(self, spec: ChildSpec) -> int:
        """Start a child; its pid. A name may be reused only after that child stopped."""
        if self._stopping:
            raise RuntimeError("the supervisor is stopping")
        old = self._children.get(spec.name)
        if old is not None and old.proc is not None and old.proc.returncode is None:
            raise RuntimeError(f"a child named {spec.name!r} is already running")
        if old is not None:
            await self._forget(old)
        child = _Child(spec)
        self._children[spec.name] = child
        try:
            await self._spawn(child)
        except BaseException:
            self._children.pop(spec.name, None)
            raise
        assert child.proc is not None
        return child.proc.pid

    async def watch(self) -> None:
        """Run forever: restart children that exit (with backoff); raise ChildFailed for the others."""
        exits = self._exit_queue()
        while True:
            name, proc, code = await exits.get()
            child = self._children.get(name)
            if self._stopping or child is None or child.proc is not proc:
                continue  # stopped on purpose, or an exit we already handled
            if not child.spec.restart:
                raise ChildFailed(name, code, self.last_log_lines(name))
            if time.monotonic() - child.started_at >= BACKOFF_RESET_AFTER_S:
                child.backoff = BACKOFF_INITIAL_S
            delay = child.backoff
            child.backoff = min(child.backoff * 2, BACKOFF_MAX_S)
            self.log(f"{name} exited with code {code}; restarting in {delay:g}s")
            child.restart_task = asyncio.create_task(self._restart_later(child, proc, delay))

    async def stop(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Stop every child, newest first: SIGTERM to its group, SIGKILL after `timeout`. Idempotent."""
        self._stopping = True
        try:
            for child in list(self._children.values()):
                if child.restart_task is not None:
                    child.restart_task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await child.restart_task
            for child in reversed(list(self._children.values())):
                await self._stop_child(child, timeout)
                await self._forget(child)
                self._children.pop(child.spec.name, None)
                self._write_pid_file()
            with contextlib.suppress(FileNotFoundError):
                self.pid_file.unlink()
        finally:
            self._stopping = False
            self._exits = None

    # ---------------------------------------------------------------------------------- internals

    def _exit_queue(self) -> asyncio.Queue[tuple[str, asyncio.subprocess.Process | None, int]]:
        if self._exits is None:
            self._exits = asyncio.Queue()
        return self._exits

    async def _spawn(self, child: _Child) -> None:
        spec = child.spec
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path(spec.name).open("ab") as out:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            out.write(f"--- {stamp} starting: {' '.join(spec.argv)}\n".encode())
            out.flush()
            proc = await asyncio.create_subprocess_exec(
                *spec.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                env=spec.env,
                cwd=spec.cwd,
                start_new_session=True,
                preexec_fn=self._preexec,
            )
        child.proc = proc
        child.started_at = time.monotonic()
        child.monitor = asyncio.create_task(self._monitor(spec.name, proc))
        self._write_pid_file()

    async def _monitor(self, name: str, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        self._write_pid_file()
        self._exit_queue().put_nowait((name, proc, code))

    async def _restart_later(self, child: _Child, dead: asyncio.subprocess.Process | None, delay: float) -> None:
        await asyncio.sleep(delay)
        if self._stopping or self._children.get(child.spec.name) is not child:
            return
        # Whatever the dead child left in its group goes with it.
        if dead is not None and _signal_group(dead.pid, 0):
            _signal_group(dead.pid, signal.SIGKILL)
        try:
            await self._spawn(child)
        except OSError as exc:
            self.log(f"{child.spec.name} could not be restarted: {exc}")
            child.proc = None
            self._exit_queue().put_nowait((child.spec.name, None, -1))

    async def _stop_child(self, child: _Child, grace: float) -> None:
        proc = child.proc
        if proc is None:
            return
        name = child.spec.name
        began = time.monotonic()
        if proc.returncode is None:
            self.log(f"stopping {name} (pid {proc.pid})")
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                await self._kill_stuck(child, proc, grace)
            self.log(f"{name} stopped (code {proc.returncode}) in {time.monotonic() - began:.1f}s")
        # Grandchildren that outlived the leader are still in its group.
        if _signal_group(proc.pid, 0):
            _signal_group(proc.pid, signal.SIGKILL)

    async def _kill_stuck(self, child: _Child, proc: asyncio.subprocess.Process, grace: float) -> None:
        """SIGKILL a child past its grace; first its `dump_signal`, if it has one, so that its stacks reach its log."""
        name = child.spec.name
        dump = child.spec.dump_signal
        if dump is None:
            self.log(f"{name} did not stop within {grace:g}s; killing it")
        else:
            self.log(
                f"{name} did not stop within {grace:g}s; sent {dump.name} for its stacks ({self.log_path(name)}), "
                "then killing it"
            )
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, dump)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), _DUMP_WAIT_S)
        if proc.returncode is None:
            _signal_group(proc.pid, signal.SIGKILL)
            await proc.wait()

    async def _forget(self, child: _Child) -> None:
        for task in (child.monitor, child.restart_task):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        child.monitor = None
        child.restart_task = None

    def _write_pid_file(self) -> None:
        pids: dict[str, int] = {"supervisor": os.getpid(), **self.pids()}
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.pid_file.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(pids, indent=2) + "\n")
        os.replace(tmp, self.pid_file)
