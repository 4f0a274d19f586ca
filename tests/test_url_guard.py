"""check_url: every rule, with a fake resolver (no DNS, no network)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from infra.url_guard import CIVITAI_ALLOWED_HOSTS, GuardedUrl, UrlRefused, check_url, host_allowed

PUBLIC_V4 = "104.18.10.20"
PUBLIC_V6 = "2606:4700::6812:a14"


def resolver(table: dict[str, list[str]]) -> Callable[[str], list[str]]:
    def resolve(host: str) -> list[str]:
        if host not in table:
            raise AssertionError(f"unexpected DNS lookup of {host}")
        return table[host]

    return resolve


def no_dns(host: str) -> list[str]:
    raise AssertionError(f"unexpected DNS lookup of {host}")


def civitai(url: str, addresses: list[str] | None = None, host: str | None = None) -> GuardedUrl:
    name = host or url.split("/")[2].split(":")[0]
    table = {name: addresses if addresses is not None else [PUBLIC_V4]}
    return check_url(url, allowed_hosts=CIVITAI_ALLOWED_HOSTS, resolve=resolver(table))


def refused(url: str, allowed: tuple[str, ...] = CIVITAI_ALLOWED_HOSTS, addresses: list[str] | None = None) -> str:
    def resolve(host: str) -> list[str]:
        return addresses if addresses is not None else [PUBLIC_V4]

    with pytest.raises(UrlRefused) as caught:
        check_url(url, allowed_hosts=allowed, resolve=resolve)
    assert not caught.value.retriable
    return caught.value.reason


# -- what passes ------------------------------------------------------------------------------------


def test_a_civitai_url_passes_with_its_address() -> None:
    guarded = civitai("https://civitai.com/api/download/models/12345?type=Model")
    assert guarded == GuardedUrl(
        url="https://civitai.com/api/download/models/12345?type=Model",
        scheme="https",
        host="civitai.com",
        port=443,
        address=PUBLIC_V4,
        addresses=(PUBLIC_V4,),
    )
    assert guarded.host_header == "civitai.com"


def test_subdomains_of_a_dot_entry_pass() -> None:
    assert civitai("https://b2.civitai.com/file/x.safetensors").host == "b2.civitai.com"
    assert civitai("https://a.b.civitai.com/x").host == "a.b.civitai.com"


def test_the_civitai_r2_delivery_host_passes() -> None:
    host = "civitai-delivery-worker-prod.5ac0637cfd0766c97916cefa3764fbdf.r2.cloudflarestorage.com"
    assert civitai(f"https://{host}/model/1/x.safetensors?X-Amz-Signature=abc").host == host


def test_host_is_normalised_case_and_trailing_dot() -> None:
    guarded = check_url(
        "https://CivitAI.COM./x", allowed_hosts=["civitai.com"], resolve=resolver({"civitai.com": [PUBLIC_V4]})
    )
    assert guarded.host == "civitai.com"


def test_every_resolved_address_is_returned_and_the_first_is_used() -> None:
    guarded = civitai("https://civitai.com/x", [PUBLIC_V6, PUBLIC_V4])
    assert guarded.address == PUBLIC_V6
    assert guarded.addresses == (PUBLIC_V6, PUBLIC_V4)


def test_port_and_host_header() -> None:
    guarded = check_url("https://civitai.com:8443/x", allowed_hosts=["civitai.com"], resolve=lambda h: [PUBLIC_V4])
    assert (guarded.port, guarded.host_header) == (8443, "civitai.com:8443")
    ipv6 = check_url("http://[::1]:8080/x", allowed_hosts=["::1"], resolve=no_dns)
    assert (ipv6.address, ipv6.host_header) == ("::1", "[::1]:8080")


def test_an_allowlisted_ip_literal_is_not_resolved() -> None:
    guarded = check_url("http://127.0.0.1:9000/x", allowed_hosts=["127.0.0.1"], resolve=no_dns)
    assert (guarded.address, guarded.port, guarded.scheme) == ("127.0.0.1", 9000, "http")


def test_ip_entries_compare_as_addresses() -> None:
    assert check_url("https://[0:0::1]/x", allowed_hosts=["[::1]"], resolve=no_dns).address == "::1"


# -- scheme and shape -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["ftp://civitai.com/x", "file:///etc/passwd", "gopher://civitai.com/", "//civitai.com/x"]
)
def test_only_http_schemes(url: str) -> None:
    assert "only https" in refused(url)


def test_http_only_for_hosts_allowlisted_by_name() -> None:
    assert "plain http" in refused("http://b2.civitai.com/x", allowed=("civitai.com", ".civitai.com"))
    assert check_url("http://civitai.com/x", allowed_hosts=["civitai.com"], resolve=lambda h: [PUBLIC_V4])


@pytest.mark.parametrize(
    "url",
    [
        "https://user:pass@civitai.com/x",
        "https://user@civitai.com/x",
        "https://evil.com@civitai.com/x",
        "https://civitai.com@evil.com/x",
    ],
)
def test_no_userinfo(url: str) -> None:
    assert "credentials" in refused(url, allowed=("civitai.com", "evil.com"))


@pytest.mark.parametrize(
    "url",
    [
        "https://civitai.com\\@evil.com/x",
        "https://civitai.com /x",
        "https://civitai.com/\nx",
        "https://civitai.com/\x00",
    ],
)
def test_ambiguous_characters_are_refused(url: str) -> None:
    refused(url)


def test_broken_urls_are_refused() -> None:
    assert "cannot be parsed" in refused("https://[::1/x")
    assert "invalid port" in refused("https://civitai.com:99999/x")
    assert "no host" in refused("https:///x")
    assert "longer" in refused("https://civitai.com/" + "a" * 9000)


# -- the allowlist ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "evil.com",
        "civitai.com.evil.com",
        "evilcivitai.com",
        "civitai.co",
        "r2.cloudflarestorage.com",
        "someone-else.r2.cloudflarestorage.com",
    ],
)
def test_hosts_off_the_allowlist_are_refused_before_any_lookup(host: str) -> None:
    with pytest.raises(UrlRefused, match="not an allowed host"):
        check_url(f"https://{host}/x", allowed_hosts=CIVITAI_ALLOWED_HOSTS, resolve=no_dns)


def test_a_dot_entry_does_not_admit_the_bare_domain() -> None:
    assert "not an allowed host" in refused("https://civitai.com/x", allowed=(".civitai.com",))


def test_a_plain_entry_does_not_admit_subdomains() -> None:
    assert "not an allowed host" in refused("https://b2.civitai.com/x", allowed=("civitai.com",))


def test_host_allowed_helper() -> None:
    assert host_allowed("B2.CivitAI.com", CIVITAI_ALLOWED_HOSTS)
    assert not host_allowed("evil.com", CIVITAI_ALLOWED_HOSTS)
    assert not host_allowed("bad host", CIVITAI_ALLOWED_HOSTS)


# -- resolved addresses -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("127.0.0.1", "loopback"),
        ("127.8.8.8", "loopback"),
        ("::1", "loopback"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("100.64.0.1", "non-global"),
        ("::ffff:127.0.0.1", "IPv4-mapped loopback"),
        ("::ffff:10.0.0.1", "IPv4-mapped private"),
        ("::ffff:192.168.0.1", "IPv4-mapped private"),
        ("64:ff9b::a00:1", "private (embedded in IPv6)"),
        ("2002:7f00:1::", "loopback (embedded in IPv6)"),
    ],
)
def test_non_public_addresses_are_refused(address: str, reason: str) -> None:
    message = refused("https://b2.civitai.com/x", addresses=[address])
    assert message.endswith(f", a {reason} address"), message


def test_one_bad_address_among_good_ones_is_enough() -> None:
    assert "loopback" in refused("https://b2.civitai.com/x", addresses=[PUBLIC_V4, "127.0.0.1"])


def test_an_ipv4_mapped_public_address_passes() -> None:
    assert civitai("https://b2.civitai.com/x", ["::ffff:104.18.10.20"]).address == PUBLIC_V4


def test_a_name_that_resolves_to_nothing_is_refused() -> None:
    assert "does not resolve" in refused("https://civitai.com/x", addresses=[])


def test_an_ip_literal_host_off_the_allowlist_is_refused() -> None:
    assert "not an allowed host" in refused("https://10.0.0.1/x")
    assert "not an allowed host" in refused("https://[::ffff:127.0.0.1]/x")


def test_a_name_matched_by_a_dot_entry_may_not_point_inside() -> None:
    assert "private" in refused("https://internal.civitai.com/x", addresses=["10.0.0.5"])


def test_an_exact_entry_may_point_inside() -> None:
    # The operator named this host itself (an internal mirror): its addresses are trusted.
    guarded = check_url(
        "http://minio.internal:9000/x", allowed_hosts=["minio.internal"], resolve=lambda h: ["10.0.0.5", "127.0.0.1"]
    )
    assert guarded.addresses == ("10.0.0.5", "127.0.0.1")


def test_an_ip_literal_on_the_allowlist_may_be_inside() -> None:
    assert check_url("http://10.0.0.5/x", allowed_hosts=["10.0.0.5"], resolve=no_dns).address == "10.0.0.5"
    assert check_url("http://[::ffff:127.0.0.1]/x", allowed_hosts=["::ffff:127.0.0.1"], resolve=no_dns)


def test_a_different_spelling_of_an_allowlisted_ip_is_not_trusted() -> None:
    # 127.1 is 127.0.0.1 to the resolver, but not the entry written on the allowlist
    assert "not an allowed host" in refused("http://127.1/x", allowed=("127.0.0.1",), addresses=["127.0.0.1"])


# -- cloud metadata: always refused -------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/",
        "http://[::ffff:a9fe:a9fe]/",
        "http://[::a9fe:a9fe]/",
        "http://[64:ff9b::a9fe:a9fe]/",
        "http://[2002:a9fe:a9fe::]/",
        "http://169.254.170.2/v2/credentials",
        "http://100.100.100.200/latest/meta-data/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://METADATA.google.internal./computeMetadata/v1/",
    ],
)
def test_metadata_endpoints_are_refused_even_when_allowlisted(url: str) -> None:
    host = url.split("/")[2]
    allowed = (host, host.strip("[]"), "metadata.google.internal", ".internal", ".google.internal")
    with pytest.raises(UrlRefused, match="metadata"):
        check_url(url, allowed_hosts=allowed, resolve=lambda h: ["169.254.169.254"])


def test_an_allowlisted_name_resolving_to_metadata_is_refused() -> None:
    for address in ("169.254.169.254", "fd00:ec2::254", "::ffff:169.254.169.254"):
        with pytest.raises(UrlRefused, match="metadata"):
            check_url("http://evil.test/x", allowed_hosts=["evil.test"], resolve=resolver({"evil.test": [address]}))


def test_the_default_allowlist_is_what_civitai_downloads_need() -> None:
    assert set(CIVITAI_ALLOWED_HOSTS) == {
        "civitai.com",
        ".civitai.com",
        "civitai-delivery-worker-prod.5ac0637cfd0766c97916cefa3764fbdf.r2.cloudflarestorage.com",
    }
