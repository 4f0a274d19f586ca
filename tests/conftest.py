"""Session fixtures: one real stack (broker, S3, API, agents) on free ports for the whole run, and the
fake Hugging Face Hub and CivitAI it fetches adapters from (started first: the stack is told their URLs)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from minio import Minio

from infra.s3 import make_client
from tests.fake_civitai import FakeCivitai
from tests.fake_hub import FakeHub
from tests.services import external_services
from tests.support import Api, Stack, start_stack, stop_stack

# What the stack's CivitAI allowlist holds in tests: CivitAI's own names and the fake's loopback address.
TEST_CIVITAI_HOSTS = "civitai.com,.civitai.com,127.0.0.1"
# The stack's adapter size limit in tests: small enough that an endless download is cut off quickly.
TEST_MAX_ADAPTER_BYTES = 32 << 20
# Empower's unit_price per base model (the tiny Llama of tests/peft_artifacts.py), "*" for the rest.
TEST_UNIT_PRICES = '{"*": 0.5, "loraplane-tests/tiny-llama": 1.25}'


@pytest.fixture(scope="session")
def hub_server() -> Iterator[FakeHub]:
    """A Hub with no repositories yet: tests add theirs to `.repos` (and tokens to `.tokens`)."""
    with FakeHub({}) as running:
        yield running


@pytest.fixture(scope="session")
def civitai_server() -> Iterator[FakeCivitai]:
    """CivitAI with no files yet: tests add theirs to `.files` (version id -> FakeFile)."""
    with FakeCivitai({}) as running:
        yield running


@pytest.fixture(scope="session")
def stack(
    tmp_path_factory: pytest.TempPathFactory, hub_server: FakeHub, civitai_server: FakeCivitai
) -> Iterator[Stack]:
    sources = {
        "HF_ENDPOINT": hub_server.url,
        "LORAPLANE_CIVITAI_ALLOWED_HOSTS": TEST_CIVITAI_HOSTS,
        "LORAPLANE_MAX_ADAPTER_BYTES": str(TEST_MAX_ADAPTER_BYTES),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "LORAPLANE_LORA_UNIT_PRICES": TEST_UNIT_PRICES,
        # The stack's node agent (tests/test_deployments_e2e.py deploys on it); other tests register fake nodes.
        "LORAPLANE_NODE_ID": "test-cpu-node",
        "LORAPLANE_NODE_DEVICES": "cpu:1",
        # The gateway sends the usage it counted every second (10 s by default), so tests read it soon.
        "LORAPLANE_GATEWAY_USAGE_FLUSH_S": "1",
        # Crash points a test may arm (infra.faults; tests/test_atomic_decisions.py).
        "LORAPLANE_FAULT_INJECTION": "true",
    }
    with external_services() as external:
        running = start_stack(Path(tmp_path_factory.mktemp("stack")), extra_env={**sources, **(external or {})})
        try:
            yield running
        finally:
            left = stop_stack(running)
            assert not left, f"processes left behind: {left}"


@pytest.fixture(scope="session")
def admin_key(stack: Stack) -> str:
    return stack.issue_key("admin", "test-admin")


@pytest.fixture(scope="session")
def user_key(stack: Stack) -> str:
    return stack.issue_key("user", "test-user")


@pytest.fixture()
def admin(stack: Stack, admin_key: str) -> Iterator[Api]:
    with Api(stack, admin_key) as client:
        yield client


@pytest.fixture()
def user(stack: Stack, user_key: str) -> Iterator[Api]:
    with Api(stack, user_key) as client:
        yield client


@pytest.fixture()
def anonymous(stack: Stack) -> Iterator[Api]:
    with Api(stack, None) as client:
        yield client


@pytest.fixture(scope="session")
def s3(stack: Stack) -> Minio:
    """A client of the stack's S3, for tests that look at the objects themselves."""
    return make_client(stack.settings())


@pytest.fixture(scope="session")
def bucket(stack: Stack) -> str:
    return stack.settings().s3_bucket
