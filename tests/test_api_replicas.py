"""Two API processes on one PostgreSQL read model: both project the log into it without conflicts, and each wakes its
own waiters, whichever of them applied the outcome."""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.support import Stack, free_port, wait_until
from tests.test_readmodel_postgres import postgres_url  # noqa: F401 - the fixture

REPLICAS = 2


@pytest.fixture()
def replicas(stack: Stack, postgres_url: str, tmp_path: Path) -> Iterator[list[str]]:  # noqa: F811
    env = psutil.Process(stack.pids()["api"]).environ()
    urls, processes = [], []
    try:
        for i in range(REPLICAS):
            port = free_port()
            log = (tmp_path / f"api-{i}.log").open("wb")
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "infra.cli", "api"],
                    env={**env, "DATABASE_URL": postgres_url, "LORAPLANE_API_PORT": str(port)},
                    cwd=tmp_path,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
            urls.append(f"http://127.0.0.1:{port}")

        def ready(url: str) -> bool:
            try:
                return httpx.get(f"{url}/readyz", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(lambda: all(ready(u) for u in urls), timeout=180, interval=0.5, message="both replicas ready")
        yield urls
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
    for i in range(REPLICAS):
        log_text = (tmp_path / f"api-{i}.log").read_text(errors="replace")
        assert "read model follower failed" not in log_text, log_text[-3000:]
        assert "Traceback" not in log_text, log_text[-3000:]


def test_two_api_processes_share_one_postgresql_read_model(replicas: list[str], admin_key: str) -> None:
    headers = {"Authorization": f"Bearer {admin_key}"}
    # the key was issued long before these processes started: both found it by projecting the log
    wait_until(
        lambda: all(httpx.get(f"{u}/v2/workspaces", headers=headers).status_code == 200 for u in replicas),
        timeout=120,
        message="the admin key in the shared read model",
    )
    tag = uuid.uuid4().hex[:6]
    names = [f"rep-{tag}-{i}" for i in range(24)]

    def create(i: int) -> int:
        url = replicas[i % REPLICAS]
        answer = httpx.post(f"{url}/v2/workspaces", params={"wait": 30}, json={"name": names[i]}, headers=headers)
        return answer.status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(create, range(len(names))))
    assert codes == [201] * len(names), codes  # each answered once its outcome was projected, by either process

    for url in replicas:
        listed = httpx.get(f"{url}/v2/workspaces", params={"page_size": 1000}, headers=headers).json()["data"]
        assert set(names) <= {w["name"] for w in listed}
    again = httpx.post(f"{replicas[1]}/v2/workspaces", params={"wait": 30}, json={"name": names[0]}, headers=headers)
    assert again.status_code == 409, again.text
