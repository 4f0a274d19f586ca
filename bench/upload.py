"""Upload benchmark: a 500 MB LoRA through `POST /api/v1/admin/lora/upload` against a direct `put_object`.

Run `python bench/upload.py`. It starts a stack (`loraplane up` on free ports in a temporary directory),
writes a valid kohya LoRA of about 500 MB (a real safetensors header, zero tensor data; `--random` fills the
tensors with random bytes, as a real LoRA's are: SeaweedFS compresses zeros), then in one run:
  1. puts the file straight into the stack's S3 with the minio SDK (the baseline),
  2. uploads it through the API and waits for the answer (streamed to `blobs/uploads/`, validated by content,
     stored where it was streamed, as a caller of seed 004 sees it),
  3. uploads it again with `?wait=0` (answered once the bytes are staged and the command sent).
`--rounds N` does that N times on one stack, with new bytes each round, and prints the median ratios: on a
shared machine one round says little.
While the API uploads run, a thread samples the API process's RSS; the growth is the peak minus the
RSS just before the upload. Goals: API throughput >= 0.7 x direct, RSS growth <= 64 MB.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import psutil

from infra.s3 import make_client
from infra.settings import Settings
from tests.artifacts import write_large_kohya_lora
from tests.support import Stack, start_stack, stop_stack

MB = 1_000_000


class PeakRss:
    """Samples one process's RSS in a thread until stopped; `growth` is the peak minus the first sample."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        self._process = psutil.Process(pid)
        self._interval = interval
        self.baseline = self._process.memory_info().rss
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(self._interval)

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


def api_pid(stack: Stack) -> int:
    pids = stack.pids()
    if "api" not in pids:
        raise SystemExit(f"no 'api' process among {sorted(pids)}")
    return pids["api"]


def upload(stack: Stack, key: str, path: Path, name: str, wait: float | None) -> tuple[float, int, httpx.Response]:
    params = {"wait": wait} if wait is not None else {}
    with PeakRss(api_pid(stack)) as rss, path.open("rb") as file:
        started = time.perf_counter()
        answer = httpx.post(
            f"{stack.api_url}/api/v1/admin/lora/upload",
            params=params,
            headers={"Authorization": f"Bearer {key}"},
            files={"file": (name, file, "application/octet-stream")},
            data={"entity_type": "styles"},
            timeout=600,
        )
        elapsed = time.perf_counter() - started
    return elapsed, rss.growth, answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=500, help="file size in MB (10^6 bytes)")
    parser.add_argument("--random", action="store_true", help="random tensor data (incompressible) instead of zeros")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of the three uploads, each with new bytes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="loraplane-bench-") as tmp:
        work = Path(tmp)
        path = work / "bench.safetensors"
        size = write_large_kohya_lora(path, args.size_mb * MB, random_data=args.random)
        data = "random" if args.random else "zero"
        print(f"file: {size:,} bytes (valid kohya LoRA header, {data} tensor data)")
        stack = start_stack(work / "stack")
        rounds: list[tuple[float, float, float, int, int]] = []
        try:
            key = stack.issue_key("admin", "bench")
            env = stack.cli_env()
            s3 = make_client(Settings.model_validate({"s3_endpoint": env["S3_ENDPOINT"]}))
            bucket = env.get("S3_BUCKET", "loraplane")
            for n in range(args.rounds):
                # New bytes each round: equal bytes would be stored once, which is not what is timed here.
                with path.open("r+b") as file:
                    file.seek(-8, 2)
                    file.write(uuid.uuid4().bytes[:8])

                direct_key = f"bench/direct-{uuid.uuid4().hex}"
                started = time.perf_counter()
                s3.fput_object(bucket, direct_key, str(path))
                direct = time.perf_counter() - started
                s3.remove_object(bucket, direct_key)

                synchronous, sync_rss, answer = upload(stack, key, path, f"bench-{n}.safetensors", None)
                if answer.status_code != 200:
                    raise SystemExit(f"the API upload answered {answer.status_code}: {answer.text[:500]}")
                staged, staged_rss, answer = upload(stack, key, path, f"bench-{n}-staged.safetensors", 0)
                if answer.status_code != 202:
                    raise SystemExit(f"the API upload with wait=0 answered {answer.status_code}: {answer.text[:500]}")
                rounds.append((direct, synchronous, staged, sync_rss, staged_rss))
        finally:
            stop_stack(stack)

    def rate(seconds: float) -> float:
        return size / MB / seconds

    for n, (direct, synchronous, staged, sync_rss, staged_rss) in enumerate(rounds, 1):
        print(f"round {n}")
        print(f"  direct put_object (minio SDK):       {direct:6.2f} s  {rate(direct):7.1f} MB/s")
        print(
            f"  API upload, answered 200 (stored):   {synchronous:6.2f} s  {rate(synchronous):7.1f} MB/s"
            f"  ratio {direct / synchronous:.2f}  API RSS growth {sync_rss / 2**20:.1f} MiB"
        )
        print(
            f"  API upload, ?wait=0 (staged):        {staged:6.2f} s  {rate(staged):7.1f} MB/s"
            f"  ratio {direct / staged:.2f}  API RSS growth {staged_rss / 2**20:.1f} MiB"
        )
    if len(rounds) > 1:
        stored_ratios = [d / s for d, s, *_ in rounds]
        staged_ratios = [d / s for d, _, s, *_ in rounds]
        growth = max(max(a, b) for *_, a, b in rounds)
        stored_median, staged_median = statistics.median(stored_ratios), statistics.median(staged_ratios)
        print(
            f"median ratio, stored {stored_median:.2f}, staged {staged_median:.2f};"
            f" largest API RSS growth {growth / 2**20:.1f} MiB"
        )
    print("goals: ratio >= 0.70, API RSS growth <= 64 MiB")


if __name__ == "__main__":
    main()
