"""Seed 001: `POST /v1/lora/create` registers an image LoRA from the (fake, local) CivitAI: its download
API answers 307 to a CDN that names the file in Content-Disposition; every hop is checked."""

from __future__ import annotations

import hashlib
import itertools
from datetime import datetime
from typing import Any

import pytest

from streams.artifacts import blob_key
from tests.conftest import TEST_MAX_ADAPTER_BYTES
from tests.fake_civitai import FakeCivitai, FakeFile
from tests.peft_artifacts import kohya_image_lora
from tests.support import Api, Stack
from tests.test_empower_api import WAIT, adapter_events, stored_sha256, unique

_VERSION_IDS = itertools.count(9100)


def create(client: Api, url: str, name: str, **extra: Any) -> Any:
    body = {
        "base_model": "stabilityai/stable-diffusion-xl-base-1.0",
        "lora_name": name,
        "source": {"type": "civitai", "civit_url": url},
        "private": False,
        **extra,
    }
    return client.post("/v1/lora/create", json=body, params=WAIT)


def serve(civitai: FakeCivitai, body: bytes, disposition: str | None) -> str:
    """Serve `body` as a new model version; answer its download URL."""
    version_id = next(_VERSION_IDS)
    civitai.files[version_id] = FakeFile(body, disposition)
    return f"{civitai.site_url}/api/download/models/{version_id}"


def assert_url_refused(answer: Any, *words: str) -> None:
    assert answer.status_code == 422, answer.text
    [detail] = answer.json()["detail"]
    assert detail["loc"] == ["body", "source", "civit_url"], detail
    for word in words:
        assert word in detail["msg"], detail


def test_an_image_lora_from_civitai_is_downloaded_through_the_redirect_and_stored(
    stack: Stack, user: Api, civitai_server: FakeCivitai
) -> None:
    weights = kohya_image_lora()
    url = serve(civitai_server, weights, 'attachment; filename="pixel_art_xl.safetensors"')
    name = unique("pixel-art")
    answer = create(user, url, name, description="pixels")
    assert answer.status_code == 200, answer.text
    deploy = answer.json()
    digest = hashlib.sha256(weights).hexdigest()
    assert deploy["deploy_id"] == f"{name}@v1"
    assert (deploy["model_name"], deploy["version"], deploy["type"]) == (name, digest, "lora")
    assert (deploy["status"], deploy["fail_reason"], deploy["task"]) == ("deployed", "", "text-to-image")
    assert deploy["instances"] == {"running": 0, "pending": 0}
    assert deploy["config"] is None and deploy["settings"] is None
    assert datetime.fromisoformat(deploy["created_at"]) <= datetime.fromisoformat(deploy["updated_at"])

    [ready] = adapter_events(stack, name, "adapter.stored")
    provenance = ready["payload"]["provenance"]
    assert provenance["filename"] == "pixel_art_xl.safetensors"  # from Content-Disposition
    version_id = int(url.rsplit("/", 1)[1])
    assert provenance["civitai_version_id"] == version_id
    assert provenance["source_url"].startswith(civitai_server.cdn_url) and "?" not in provenance["source_url"]
    assert any(r.path.startswith(f"/file/{version_id}/") for r in civitai_server.seen("cdn"))  # followed
    # the presigned URL's signature is a credential: in no event (above) and in no log line
    signature = f"X-Amz-Signature=sig{version_id}"
    for log in [*(stack.data_dir / "logs").glob("*"), stack.data_dir / "up.log"]:
        assert signature not in log.read_text(errors="replace"), log
    [stored] = ready["payload"]["artifact"]["files"]
    assert stored["path"] == "pixel_art_xl.safetensors" and stored["key"] == blob_key(digest)
    assert stored_sha256(stack, blob_key(digest)) == digest
    assert ready["payload"]["analysis"]["format"] == "kohya_image"
    [requested] = adapter_events(stack, name, "adapter.requested")
    spec = requested["payload"]["spec"]
    assert (spec["api"], spec["description"], spec["private"]) == ("deepinfra", "pixels", False)


def test_the_xi_api_key_header_is_accepted_and_a_second_create_is_version_2(
    user: Api, civitai_server: FakeCivitai
) -> None:
    url = serve(civitai_server, kohya_image_lora(seed=1), 'attachment; filename="v.safetensors"')
    name = unique("twice")
    first = create(user, url, name)
    assert first.status_code == 200, first.text
    again = user.post(
        "/v1/lora/create",
        json={
            "base_model": "sdxl",
            "lora_name": name,
            "source": {"type": "civitai", "civit_url": url},
            "private": True,
        },
        params=WAIT,
        headers={"xi-api-key": "anything"},
    )
    assert again.status_code == 200, again.text
    assert again.json()["deploy_id"] == f"{name}@v2" and again.json()["version"] == first.json()["version"]


def test_a_download_over_the_size_limit_is_refused(stack: Stack, user: Api, civitai_server: FakeCivitai) -> None:
    name = unique("huge")
    answer = create(user, f"{civitai_server.site_url}/huge", name)
    assert_url_refused(answer, "larger than the limit", str(TEST_MAX_ADAPTER_BYTES))
    assert civitai_server.huge.sent < 4 * TEST_MAX_ADAPTER_BYTES  # the stream was cut off, not read to its end
    [rejected] = adapter_events(stack, name, "adapter.rejected")
    assert "limit" in rejected["payload"]["reason"]
    assert_url_refused(create(user, f"{civitai_server.site_url}/announced-huge", unique("announced")), "limit")


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("https://evil.example.com/api/download/models/1", ("evil.example.com", "not an allowed host")),
        ("ftp://civitai.com/api/download/models/1", ("only https",)),
        ("http://169.254.169.254/latest/meta-data/", ("metadata",)),
        ("file:///etc/passwd", ("only https",)),
        ("https://user@civitai.com/api/download/models/1", ("credentials",)),
    ],
)
def test_a_url_off_the_allowlist_is_refused_before_any_command(
    stack: Stack, user: Api, url: str, words: tuple[str, ...]
) -> None:
    name = unique("refused")
    assert_url_refused(create(user, url, name), *words)
    assert adapter_events(stack, name) == []  # nothing was registered


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("/to-evil", ("evil.example.com", "not an allowed host")),
        ("/to-private", ("10.20.30.40", "not an allowed host")),
        ("/to-metadata", ("metadata",)),
    ],
)
def test_a_redirect_off_the_allowlist_is_refused(
    stack: Stack, user: Api, civitai_server: FakeCivitai, path: str, words: tuple[str, ...]
) -> None:
    name = unique("redirected")
    assert_url_refused(create(user, civitai_server.site_url + path, name), *words)
    assert adapter_events(stack, name, "adapter.rejected")


def test_a_file_that_is_not_a_lora_is_refused(user: Api, civitai_server: FakeCivitai) -> None:
    url = serve(civitai_server, b"<html>not weights</html>", 'attachment; filename="page.safetensors"')
    assert_url_refused(create(user, url, unique("html")), "neither safetensors nor a PyTorch checkpoint")


@pytest.mark.parametrize(
    ("change", "loc"),
    [
        ({"source": {"type": "hf", "civit_url": "https://civitai.com/x"}}, ["body", "source", "type"]),
        ({"private": None}, ["body", "private"]),
        ({"lora_name": ""}, ["body", "lora_name"]),
    ],
)
def test_bad_bodies_are_422_on_the_field(user: Api, change: dict[str, Any], loc: list[str]) -> None:
    body = {
        "base_model": "sdxl",
        "lora_name": "x",
        "source": {"type": "civitai", "civit_url": "https://civitai.com/api/download/models/1"},
        "private": False,
        **change,
    }
    answer = user.post("/v1/lora/create", json=body)
    assert answer.status_code == 422, answer.text
    assert loc in [d["loc"] for d in answer.json()["detail"]], answer.json()


def test_an_invalid_lora_name_is_422_on_lora_name(user: Api, civitai_server: FakeCivitai) -> None:
    url = serve(civitai_server, kohya_image_lora(), None)
    answer = create(user, url, "one/two/three")
    assert answer.status_code == 422, answer.text
    [detail] = answer.json()["detail"]
    assert detail["loc"] == ["body", "lora_name"] and "at most one '/'" in detail["msg"], detail
