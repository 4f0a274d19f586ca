"""fetch_adapter against a fake Hub on 127.0.0.1, with the real huggingface_hub client."""

from __future__ import annotations

import hashlib
import logging
import socket
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.errors import is_retriable
from infra.huggingface import (
    AdapterTooLarge,
    HfFetchResult,
    HfFile,
    HubGatedRepo,
    HubRepoNotFound,
    HubRevisionNotFound,
    HubTokenRefused,
    HubUnavailable,
    NoAdapterFiles,
    fetch_adapter,
)
from tests.fake_hub import FakeHub, FakeRepo, commit_sha

TOKEN = "hf_reader_0123456789abcdefghijklmnop"
OTHER_TOKEN = "hf_stranger_0123456789abcdefghijklm"
WRONG_TOKEN = "hf_wrong_0123456789abcdefghijklmnopq"
MB = 1 << 20

CONFIG = b'{"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}'
CARD = b"---\nlicense: apache-2.0\nbase_model: mistralai/Mistral-7B-v0.1\n---\n# A LoRA\n"
OLD = {"adapter_config.json": CONFIG, "adapter_model.safetensors": b"old weights" * 100, "README.md": CARD}
NEW = {"adapter_config.json": CONFIG, "adapter_model.safetensors": b"new weights" * 100, "README.md": CARD}
OLD_SHA, NEW_SHA = commit_sha(OLD), commit_sha(NEW)


def adapter_repo(**kwargs: object) -> FakeRepo:
    return FakeRepo(commits={OLD_SHA: OLD, NEW_SHA: NEW}, branches={"main": NEW_SHA}, tags={"v1": OLD_SHA}, **kwargs)  # type: ignore[arg-type]


@pytest.fixture()
def hub() -> Iterator[FakeHub]:
    repos = {
        "acme/lora": adapter_repo(),
        "acme/private-lora": FakeRepo.single(NEW, private=True, readers={TOKEN}),
        "acme/gated-lora": FakeRepo.single(NEW, gated=True, readers={TOKEN}),
        "acme/full-model": FakeRepo.single(
            {"config.json": b"{}", "model.safetensors": b"w" * 100, "README.md": b"# full\n"}
        ),
        "acme/extras": FakeRepo.single(
            {
                **NEW,
                ".gitattributes": b"*.safetensors filter=lfs\n",
                "training_args.bin": b"pickle" * 10,
                "optimizer.pt": b"o" * 500,
                "tokenizer.json": b"{}",
                "checkpoint-100/adapter_model.safetensors": b"c" * 300,
                "checkpoint-100/adapter_config.json": CONFIG,
            }
        ),
        "acme/bin-lora": FakeRepo.single({"adapter_config.json": CONFIG, "adapter_model.bin": b"pickled" * 50}),
        "acme/other-licence": FakeRepo.single(
            {**NEW, "README.md": b"---\nlicense: other\nlicense_name: acme-community\n---\n"}
        ),
        "acme/card-only-in-readme": FakeRepo.single({**NEW, "README.md": b"---\nlicense: mit\n---\n"}, card_data=False),
    }
    with FakeHub(repos, tokens={TOKEN: "reader", OTHER_TOKEN: "stranger"}) as running:
        yield running


def fetch(
    hub: FakeHub, dest: Path, repo: str, revision: str | None, token: str | None = None, max_bytes: int = MB
) -> HfFetchResult:
    return fetch_adapter(repo, revision, token, dest, endpoint=hub.url, max_bytes=max_bytes)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_branch_resolves_to_its_commit_and_files_come_from_it(hub: FakeHub, tmp_path: Path) -> None:
    result = fetch(hub, tmp_path, "acme/lora", "main")
    assert result.commit_sha == NEW_SHA
    assert result.requested_revision == "main"
    assert (tmp_path / "adapter_model.safetensors").read_bytes() == NEW["adapter_model.safetensors"]
    assert result.files == (
        HfFile("adapter_config.json", len(CONFIG), sha256(CONFIG)),
        HfFile("adapter_model.safetensors", 1100, sha256(NEW["adapter_model.safetensors"])),
        HfFile("README.md", len(CARD), sha256(CARD)),
    )
    # every file was asked for at the pinned sha, never by branch name
    resolves = [r.path for r in hub.requests if "/resolve/" in r.path]
    assert resolves and all(f"/resolve/{NEW_SHA}/" in p for p in resolves)


def test_a_tag_resolves_to_its_commit(hub: FakeHub, tmp_path: Path) -> None:
    result = fetch(hub, tmp_path, "acme/lora", "v1")
    assert result.commit_sha == OLD_SHA
    assert (tmp_path / "adapter_model.safetensors").read_bytes() == OLD["adapter_model.safetensors"]


def test_a_sha_is_used_as_is(hub: FakeHub, tmp_path: Path) -> None:
    assert fetch(hub, tmp_path, "acme/lora", OLD_SHA).commit_sha == OLD_SHA
    assert fetch(hub, tmp_path / "short", "acme/lora", OLD_SHA[:10]).commit_sha == OLD_SHA


def test_no_revision_means_the_default_branch(hub: FakeHub, tmp_path: Path) -> None:
    result = fetch(hub, tmp_path, "acme/lora", None)
    assert result.requested_revision is None
    assert result.commit_sha == NEW_SHA


def test_only_adapter_files_are_downloaded(hub: FakeHub, tmp_path: Path) -> None:
    result = fetch(hub, tmp_path, "acme/extras", "main")
    wanted = ["adapter_config.json", "adapter_model.safetensors", "README.md"]
    assert [f.path for f in result.files] == wanted
    assert sorted(hub.served) == sorted(wanted)
    on_disk = sorted(
        str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file() and ".cache" not in p.parts
    )
    assert on_disk == sorted(wanted)


def test_adapter_model_bin_only_without_safetensors(hub: FakeHub, tmp_path: Path) -> None:
    result = fetch(hub, tmp_path, "acme/bin-lora", "main")
    assert [f.path for f in result.files] == ["adapter_config.json", "adapter_model.bin"]
    assert result.license is None


def test_a_repo_without_adapter_files_is_refused_before_downloading(hub: FakeHub, tmp_path: Path) -> None:
    with pytest.raises(NoAdapterFiles) as caught:
        fetch(hub, tmp_path, "acme/full-model", "main")
    assert str(caught.value).startswith(
        "no adapter files in acme/full-model@main: expected adapter_config.json and adapter_model.safetensors"
    )
    assert not caught.value.retriable
    assert hub.served == []


def test_the_size_limit_is_checked_before_downloading(hub: FakeHub, tmp_path: Path) -> None:
    with pytest.raises(AdapterTooLarge, match="more than the limit of 1000"):
        fetch(hub, tmp_path, "acme/lora", "main", max_bytes=1000)
    assert hub.served == []


def test_licence_from_the_model_card(hub: FakeHub, tmp_path: Path) -> None:
    assert fetch(hub, tmp_path / "a", "acme/lora", "main").license == "apache-2.0"
    assert fetch(hub, tmp_path / "b", "acme/other-licence", "main").license == "acme-community"
    assert fetch(hub, tmp_path / "c", "acme/card-only-in-readme", "main").license == "mit"


def test_a_private_repo_without_token(hub: FakeHub, tmp_path: Path) -> None:
    with pytest.raises(HubRepoNotFound, match="repository acme/private-lora not found or private: pass hf_token"):
        fetch(hub, tmp_path, "acme/private-lora", "main")


def test_a_private_repo_with_its_token(hub: FakeHub, tmp_path: Path) -> None:
    result = fetch(hub, tmp_path, "acme/private-lora", "main", token=TOKEN)
    assert result.commit_sha == commit_sha(NEW)
    # the token goes to the Hub; the CDN's presigned URL needs none
    hub_requests = [r for r in hub.requests if not r.path.startswith("/cdn/")]
    assert hub_requests and all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in hub_requests)


def test_a_wrong_token_is_told_apart(hub: FakeHub, tmp_path: Path) -> None:
    with pytest.raises(HubTokenRefused, match="the token was refused"):
        fetch(hub, tmp_path, "acme/private-lora", "main", token=WRONG_TOKEN)


def test_a_token_without_access(hub: FakeHub, tmp_path: Path) -> None:
    with pytest.raises(HubRepoNotFound, match="not found, or hf_token has no access to it"):
        fetch(hub, tmp_path, "acme/private-lora", "main", token=OTHER_TOKEN)


def test_a_gated_repo(hub: FakeHub, tmp_path: Path) -> None:
    with pytest.raises(HubGatedRepo, match="gated"):
        fetch(hub, tmp_path, "acme/gated-lora", "main", token=OTHER_TOKEN)
    assert fetch(hub, tmp_path, "acme/gated-lora", "main", token=TOKEN).files


def test_a_missing_repo(hub: FakeHub, tmp_path: Path) -> None:
    with pytest.raises(HubRepoNotFound, match="repository acme/nope not found or private"):
        fetch(hub, tmp_path, "acme/nope", "main")


def test_a_missing_revision(hub: FakeHub, tmp_path: Path) -> None:
    with pytest.raises(HubRevisionNotFound, match="revision v9 not found in repo acme/lora"):
        fetch(hub, tmp_path, "acme/lora", "v9")


def test_a_failing_hub_is_retriable(hub: FakeHub, tmp_path: Path) -> None:
    hub.fail_with = 503
    with pytest.raises(HubUnavailable) as caught:
        fetch(hub, tmp_path, "acme/lora", "main")
    assert is_retriable(caught.value)


def test_an_unreachable_hub_is_retriable(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(HubUnavailable) as caught:
        fetch_adapter("acme/lora", "main", None, tmp_path, endpoint=f"http://127.0.0.1:{port}", max_bytes=MB)
    assert is_retriable(caught.value)


@pytest.mark.parametrize(
    ("repo", "revision", "token"),
    [
        ("acme/private-lora", "main", WRONG_TOKEN),
        ("acme/private-lora", "main", OTHER_TOKEN),
        ("acme/gated-lora", "main", OTHER_TOKEN),
        ("acme/lora", "v9", TOKEN),
        ("acme/full-model", "main", TOKEN),
        ("acme/nope", "main", WRONG_TOKEN),
    ],
)
def test_the_token_is_never_in_an_error(
    hub: FakeHub, tmp_path: Path, caplog: pytest.LogCaptureFixture, repo: str, revision: str, token: str
) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(Exception) as caught:
        fetch(hub, tmp_path, repo, revision, token=token)
    text = "".join(traceback.format_exception(caught.value))
    assert token not in text
    assert token not in repr(caught.value.args)
    assert all(token not in record.getMessage() for record in caplog.records)
