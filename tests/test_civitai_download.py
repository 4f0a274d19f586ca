"""download_civitai against a fake CivitAI (site + CDN) on 127.0.0.1; no test leaves the loopback."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import traceback
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from infra.civitai import (
    CivitaiRef,
    DownloadError,
    DownloadNotFound,
    DownloadRefused,
    DownloadResult,
    DownloadTooLarge,
    SourceUnavailable,
    TooManyRedirects,
    download_civitai,
    filename_from_content_disposition,
    parse_civitai_url,
    safe_filename,
)
from infra.errors import is_retriable
from infra.url_guard import UrlRefused
from tests.fake_civitai import HUGE_TOTAL, FakeCivitai, FakeFile

LOOPBACK = ("127.0.0.1",)
TOKEN = "civitai-token-0123456789abcdef"
BODY = b"\x08\x00\x00\x00\x00\x00\x00\x00{}      " + bytes(range(256)) * 400
DISPOSITION = "attachment; filename=\"plain.safetensors\"; filename*=UTF-8''my%20l%C3%B6ra.safetensors"


def no_dns(host: str) -> list[str]:
    raise AssertionError(f"unexpected DNS lookup of {host}")


class Sink:
    def __init__(self) -> None:
        self.data = bytearray()
        self.calls = 0

    async def __call__(self, chunk: bytes) -> None:
        self.calls += 1
        self.data += chunk


def download(url: str, sink: Callable[[bytes], Awaitable[None]] | None = None, **kwargs: Any) -> DownloadResult:
    options: dict[str, Any] = {"allowed_hosts": LOOPBACK, "max_bytes": 1 << 20, "resolve": no_dns, **kwargs}
    return asyncio.run(download_civitai(url, sink or Sink(), **options))


@pytest.fixture()
def civitai() -> Iterator[FakeCivitai]:
    files = {
        1: FakeFile(BODY, DISPOSITION),
        2: FakeFile(b"private weights", 'attachment; filename="private.safetensors"', token=TOKEN),
        3: FakeFile(b"no disposition"),
        4: FakeFile(b"latest", 'attachment; filename="latest.safetensors"'),
    }
    with FakeCivitai(files, models={7: [4, 1]}) as running:
        yield running


# -- downloads that succeed --------------------------------------------------------------------------


def test_a_download_follows_the_redirect_to_the_cdn(civitai: FakeCivitai) -> None:
    sink = Sink()
    seen: list[tuple[int, int | None]] = []
    result = download(
        civitai.site_url + "/api/download/models/1",
        sink,
        chunk_size=16 << 10,
        progress=lambda n, t: seen.append((n, t)),
    )
    assert bytes(sink.data) == BODY
    assert result == DownloadResult(
        filename="my löra.safetensors",
        size=len(BODY),
        sha256=hashlib.sha256(BODY).hexdigest(),
        content_type="application/octet-stream",
        final_url=civitai.cdn_url + "/file/1/model-1.safetensors",  # no presigned query kept
        model_id=None,
        version_id=1,
    )
    assert sink.calls > 1 and seen[-1] == (len(BODY), len(BODY))
    assert [n for n, _ in seen] == sorted(n for n, _ in seen)
    assert [r.path.split("?")[0] for r in civitai.requests] == ["/api/download/models/1", "/file/1/model-1.safetensors"]


def test_the_token_goes_to_the_site_and_never_to_the_cdn(civitai: FakeCivitai) -> None:
    sink = Sink()
    result = download(civitai.site_url + "/api/download/models/2", sink, token=TOKEN)
    assert bytes(sink.data) == b"private weights"
    assert result.filename == "private.safetensors"
    assert civitai.seen("site")[0].headers["authorization"] == f"Bearer {TOKEN}"
    assert "authorization" not in civitai.seen("cdn")[0].headers


def test_without_content_disposition_the_name_comes_from_the_url(civitai: FakeCivitai) -> None:
    assert download(civitai.site_url + "/api/download/models/3").filename == "model-3.safetensors"


def test_a_relative_redirect(civitai: FakeCivitai) -> None:
    assert download(civitai.site_url + "/relative").size == len(BODY)


def test_a_model_page_url_downloads_the_version_it_names(civitai: FakeCivitai) -> None:
    result = download(civitai.site_url + "/models/7/some-lora?modelVersionId=1")
    assert (result.model_id, result.version_id, result.size) == (7, 1, len(BODY))
    assert civitai.requests[0].path == "/api/download/models/1"


def test_a_model_page_url_without_version_downloads_the_latest(civitai: FakeCivitai) -> None:
    result = download(civitai.site_url + "/models/7")
    assert (result.model_id, result.version_id, result.filename) == (7, 4, "latest.safetensors")
    assert [r.path.split("?")[0] for r in civitai.seen("site")] == ["/api/v1/models/7", "/api/download/models/4"]


def test_names_connect_to_the_checked_address_with_the_original_host(civitai: FakeCivitai) -> None:
    lookups: list[str] = []

    def resolve(host: str) -> list[str]:
        lookups.append(host)
        assert host in ("civitai.test", "cdn.test"), f"unexpected DNS lookup of {host}"
        return ["127.0.0.1"]

    site_port = civitai.site_url.rsplit(":", 1)[1]
    cdn_port = civitai.cdn_url.rsplit(":", 1)[1]
    civitai.cdn_url = f"http://cdn.test:{cdn_port}"  # the site now redirects to a name
    result = download(
        f"http://civitai.test:{site_port}/api/download/models/1",
        allowed_hosts=["civitai.test", "cdn.test"],
        resolve=resolve,
    )
    assert result.size == len(BODY)
    assert lookups == ["civitai.test", "cdn.test"]  # one lookup per hop: nothing to rebind
    assert civitai.seen("site")[0].headers["host"] == f"civitai.test:{site_port}"
    assert civitai.seen("cdn")[0].headers["host"] == f"cdn.test:{cdn_port}"


# -- the size limit ----------------------------------------------------------------------------------


def test_the_size_limit_is_enforced_while_streaming(civitai: FakeCivitai) -> None:
    sink = Sink()
    limit = 1 << 20
    with pytest.raises(DownloadTooLarge) as caught:
        download(civitai.site_url + "/huge", sink, max_bytes=limit, chunk_size=64 << 10)
    assert not caught.value.retriable
    assert len(sink.data) <= limit
    assert civitai.huge.done.wait(5), "the server kept streaming after the client gave up"
    # it stopped at the first write after the hang-up: far from the whole body
    assert civitai.huge.sent < HUGE_TOTAL // 8, civitai.huge.sent


def test_an_announced_size_over_the_limit_is_refused_before_reading(civitai: FakeCivitai) -> None:
    sink = Sink()
    with pytest.raises(DownloadTooLarge, match="1000000000000 bytes"):
        download(civitai.site_url + "/announced-huge", sink)
    assert sink.calls == 0


def test_the_limit_also_holds_for_a_normal_file(civitai: FakeCivitai) -> None:
    sink = Sink()
    with pytest.raises(DownloadTooLarge):
        download(civitai.site_url + "/api/download/models/1", sink, max_bytes=1000)
    assert sink.calls == 0  # Content-Length said so


# -- refused redirects -------------------------------------------------------------------------------


def test_a_redirect_to_a_host_off_the_allowlist_is_refused(civitai: FakeCivitai) -> None:
    with pytest.raises(UrlRefused, match=r"evil\.example\.com is not an allowed host"):
        download(civitai.site_url + "/to-evil")


def test_a_redirect_to_the_metadata_address_is_refused_even_when_allowlisted(civitai: FakeCivitai) -> None:
    with pytest.raises(UrlRefused, match="metadata"):
        download(civitai.site_url + "/to-metadata", allowed_hosts=[*LOOPBACK, "169.254.169.254"])


def test_too_many_redirects(civitai: FakeCivitai) -> None:
    with pytest.raises(TooManyRedirects):
        download(civitai.site_url + "/loop", max_redirects=3)
    assert len(civitai.seen("site")) == 4


def test_the_first_url_is_checked_too() -> None:
    with pytest.raises(UrlRefused, match="only https"):
        download("file:///etc/passwd")
    with pytest.raises(UrlRefused, match="not an allowed host"):
        download("http://127.0.0.2:1/x")


# -- answers that are errors --------------------------------------------------------------------------


def test_401_without_a_token(civitai: FakeCivitai) -> None:
    with pytest.raises(
        DownloadRefused, match=r"the source refused access .* \(HTTP 401\): it may need a CivitAI API token"
    ):
        download(civitai.site_url + "/api/download/models/2")


def test_401_with_a_wrong_token(civitai: FakeCivitai) -> None:
    with pytest.raises(DownloadRefused, match="the token was refused") as caught:
        download(civitai.site_url + "/api/download/models/2", token="wrong-" + TOKEN)
    assert not caught.value.retriable


def test_403_and_404(civitai: FakeCivitai) -> None:
    with pytest.raises(DownloadRefused, match="HTTP 403"):
        download(civitai.site_url + "/forbidden")
    with pytest.raises(DownloadNotFound):
        download(civitai.site_url + "/api/download/models/99")


@pytest.mark.parametrize("path", ["/broken", "/ratelimited", "/cut-short"])
def test_server_errors_are_retriable(civitai: FakeCivitai, path: str) -> None:
    with pytest.raises(SourceUnavailable) as caught:
        download(civitai.site_url + path)
    assert is_retriable(caught.value)


def test_a_timeout_is_retriable(civitai: FakeCivitai) -> None:
    with pytest.raises(SourceUnavailable, match="timed out"):
        download(civitai.site_url + "/slow", timeout=0.2)


def test_connection_refused_is_retriable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(SourceUnavailable) as caught:
        download(f"http://127.0.0.1:{port}/api/download/models/1")
    assert is_retriable(caught.value)


def test_a_compressed_body_is_refused(civitai: FakeCivitai) -> None:
    with pytest.raises(DownloadError, match="compressed"):
        download(civitai.site_url + "/gzip")


@pytest.mark.parametrize("path", ["/api/download/models/2", "/unauthorized", "/broken", "/to-evil", "/huge"])
def test_the_token_is_never_in_an_error(civitai: FakeCivitai, path: str) -> None:
    secret = "url-" + TOKEN
    with pytest.raises(Exception) as caught:
        download(civitai.site_url + path + f"?token={secret}", token="wrong-" + TOKEN)
    text = "".join(traceback.format_exception(caught.value))
    assert TOKEN not in text and secret not in text


# -- pure helpers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "ref"),
    [
        ("https://civitai.com/api/download/models/12345", CivitaiRef(None, 12345)),
        ("https://civitai.com/api/download/models/12345?type=Model&format=SafeTensor", CivitaiRef(None, 12345)),
        ("https://civitai.com/models/123?modelVersionId=456", CivitaiRef(123, 456)),
        ("https://civitai.com/models/123/some-slug?modelVersionId=456", CivitaiRef(123, 456)),
        ("https://www.civitai.com/models/123/", CivitaiRef(123, None)),
        ("https://civitai.com/models/123?modelVersionId=abc", CivitaiRef(123, None)),
        ("https://civitai.com/api/v1/model-versions/456", CivitaiRef(None, 456)),
        ("https://civitai.com/api/v1/models/123", CivitaiRef(123, None)),
        ("https://evil.com/models/123?modelVersionId=456", None),
        ("https://civitai.com.evil.com/api/download/models/1", None),
        ("https://civitai.com/user/someone", None),
        ("https://civitai.com/models/abc", None),
        ("not a url", None),
        ("https://[::1/x", None),
    ],
)
def test_parse_civitai_url(url: str, ref: CivitaiRef | None) -> None:
    assert parse_civitai_url(url) == ref


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ('attachment; filename="a.safetensors"', "a.safetensors"),
        ("attachment; filename=a.safetensors", "a.safetensors"),
        ("attachment; filename=\"a.safetensors\"; filename*=UTF-8''b%C3%A9.safetensors", "bé.safetensors"),
        ("attachment; filename*=UTF-8''b%C3%A9.safetensors; filename=\"a.safetensors\"", "bé.safetensors"),
        ("attachment; filename*=utf-8'en'%E2%82%AC.bin", "€.bin"),
        ('attachment; filename="../../etc/passwd"', "passwd"),
        ('attachment; filename="C:\\\\Windows\\\\evil.dll"', "evil.dll"),
        ("attachment; filename*=UTF-8''..%2F..%2Fx.safetensors", "x.safetensors"),
        ('attachment; filename="a\\"b.safetensors"', 'a"b.safetensors'),
        ('attachment; filename="bad\x07na\x1bme.safetensors"', "badname.safetensors"),
        ("attachment; filename*=UTF-8''%0D%0Aevil%00.txt", "evil.txt"),
        ('attachment; filename=".hidden"', "hidden"),
        ('attachment; filename=".."', None),
        ("attachment", None),
        ("", None),
        (None, None),
        ("attachment; filename*=UTF-8''%FF%FE; filename=\"ok.bin\"", "ok.bin"),
    ],
)
def test_filename_from_content_disposition(header: str | None, name: str | None) -> None:
    assert filename_from_content_disposition(header) == name


def test_safe_filename_keeps_long_names_under_the_limit_with_their_extension() -> None:
    name = safe_filename("é" * 300 + ".safetensors")
    assert name is not None and name.endswith(".safetensors") and len(name.encode()) <= 200
