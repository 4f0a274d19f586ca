"""Session fixtures: one real stack (broker, S3, API, agents) on free ports for the whole run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import external_services
from tests.support import Api, Stack, start_stack, stop_stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with external_services() as external:
        running = start_stack(Path(tmp_path_factory.mktemp("stack")), extra_env=external or {})
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
