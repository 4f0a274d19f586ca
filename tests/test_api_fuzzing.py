"""An independent fuzzer holds the API to its own OpenAPI document: schemathesis, every phase (examples, coverage,
fuzzing, stateful), every check, with an admin key and with a user key. Its settings, and every check switched off
with the reason, are in tests/schemathesis.toml.

It runs against a stack of its own with no node agent: the fuzzer creates and deletes at random (deployments among
them), which must not take the session stack's devices or names from other tests.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Stack, start_stack, stop_stack

CONFIG = Path(__file__).with_name("schemathesis.toml")
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start_stack(
        tmp_path_factory.mktemp("fuzzed"),
        extra_env={"LORAPLANE_NODE": "off"},
    )
    try:
        yield running
    finally:
        assert not stop_stack(running)


def fuzz(stack: Stack, key: str, *extra: str) -> None:
    command = [
        str(SCHEMATHESIS),
        "--config-file",
        str(CONFIG),
        "run",
        f"{stack.api_url}/schema/openapi.json",
        "--header",
        f"Authorization: Bearer {key}",
        # One worker: with several, hypothesis's ast.parse runs in threads at once and CPython 3.11 fails with
        # "SystemError: AST constructor recursion depth mismatch" now and then (seen in CI).
        "--workers",
        "1",
        "--no-color",
        *extra,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    print(result.stdout[-3000:])  # the summary: operations, phases, cases generated
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-5000:]


def test_the_api_matches_its_document_for_an_admin(fuzzed: Stack) -> None:
    fuzz(fuzzed, fuzzed.issue_key("admin", "fuzzer-admin"))


def test_the_api_matches_its_document_for_a_user(fuzzed: Stack) -> None:
    # Fewer cases: the same operations, now mostly 403 on admin routes and the user's own team elsewhere.
    fuzz(fuzzed, fuzzed.issue_key("user", "fuzzer-user", team="fuzzers"), "--max-examples", "3")
