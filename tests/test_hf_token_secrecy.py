"""An HF token given to `POST /api/v1/lora` is sealed by the API and opened only by the artifacts agent:
it is in no command, no event, no log line and no answer, while the masked form is shown."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx

from streams.topics import COMMANDS, EVENTS
from tests.fake_hub import FakeHub
from tests.peft_artifacts import peft_repo_files
from tests.support import Api, Stack, read_topic
from tests.test_empower_api import WAIT, adapter_events, add_repo, unique


def test_the_token_is_nowhere_in_clear(stack: Stack, user: Api, hub_server: FakeHub) -> None:
    token = f"hf_TokenSecrecy{uuid.uuid4().hex}"
    hub_server.tokens[token] = "secrecy-tester"
    repo_id = unique("secrecy") + "/private-lora"
    add_repo(hub_server, repo_id, peft_repo_files(seed=5), private=True, readers={token})
    name = unique("secret")
    bodies: list[bytes] = []

    def call(method: str, url: str, **kwargs: Any) -> httpx.Response:
        answer = user.request(method, url, **kwargs)
        bodies.append(answer.content)
        return answer

    created = call(
        "POST",
        "/api/v1/lora",
        json={"model_name": repo_id, "model_source": "HF_HUB", "name": name, "hf_token": token},
        params=WAIT,
    )
    assert created.status_code == 200, created.content
    # A token the Hub refuses: its error path must not echo it either.
    wrong = f"hf_WrongSecrecy{uuid.uuid4().hex}"
    refused = call(
        "POST",
        "/api/v1/lora",
        json={"model_name": repo_id, "model_source": "HF_HUB", "name": name, "hf_token": wrong},
        params=WAIT,
    )
    assert refused.status_code == 422
    got = call("GET", f"/api/v1/lora/{name}")
    assert got.json()["hf_token"] == "hf_****"
    assert got.json()["version"] == 2
    call("GET", "/api/v1/lora", params={"page_size": 1000})
    call("GET", f"/v2/commands/{uuid.uuid4().hex}")

    # The sealed form travels: the agent opened it (version 1 is ready), the event holds only ciphertext.
    [requested, _] = adapter_events(stack, name, "adapter.requested")
    sealed = requested["payload"]["spec"]["source"]["sealed_token"]
    assert sealed.startswith("v1.") and token not in sealed

    secrets = (token.encode(), wrong.encode(), token[3:].encode(), wrong[3:].encode())
    for topic in (COMMANDS.name, EVENTS.name):
        records = read_topic(stack, topic)
        assert any(name.encode() in (r.value or b"") for r in records), f"{topic} holds the registration"
        for record in records:
            raw = b"".join([record.key or b"", record.value or b"", *record.headers.values()])
            assert not any(s in raw for s in secrets), f"a token in clear on {topic} at offset {record.offset}"
    logs = [*sorted((stack.data_dir / "logs").glob("*")), stack.data_dir / "up.log"]
    assert len(logs) > 1
    for path in logs:
        content = Path(path).read_bytes() if Path(path).is_file() else b""
        assert not any(s in content for s in secrets), f"a token in clear in {path}"
    for body in bodies:
        assert not any(s in body for s in secrets), body
