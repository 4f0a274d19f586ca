"""SSRF guard for URLs a user hands us: scheme, host allowlist, and every address the host resolves to.

`check_url` answers the address to connect to. The caller connects to that address (sending the
original host in the Host header and TLS SNI), so DNS cannot answer differently between check and
connect (DNS rebinding). Pure apart from `resolve`, which tests replace.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Collection
from dataclasses import dataclass
from urllib.parse import urlsplit

from infra.errors import LoraplaneError, TransientError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str], list[str]]

# Where CivitAI downloads go. `/api/download/models/{versionId}` answers 307 to a presigned URL that
# carries the file name in Content-Disposition (https://education.civitai.com/civitais-guide-to-downloading-via-api/:
# "The API will redirect to a pre signed S3-style URL"). The storage behind it is Backblaze B2 at
# b2.civitai.com (github.com/Hearmeman24/CivitAI_Downloader/pull/2: "CivitAI's 307 redirects to Backblaze
# B2") or Cloudflare R2 at `civitai-delivery-worker-prod.<account>.r2.cloudflarestorage.com` (the presigned
# URLs quoted in public download scripts name the account below). CivitAI's own R2 host only: the suffix
# `.r2.cloudflarestorage.com` would admit any R2 bucket of anyone. If CivitAI moves its storage, extend
# the allowlist through the setting rather than widening this one.
CIVITAI_ALLOWED_HOSTS: tuple[str, ...] = (
    "civitai.com",
    ".civitai.com",
    "civitai-delivery-worker-prod.5ac0637cfd0766c97916cefa3764fbdf.r2.cloudflarestorage.com",
)

# Cloud instance-metadata services hand out credentials: refused always, allowlisted or not.
# AWS/GCP/Azure/OpenStack IMDS, AWS ECS task credentials, AWS IMDS over IPv6, Alibaba Cloud.
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200")
)
METADATA_HOSTS: frozenset[str] = frozenset({"metadata.google.internal"})

_PRIVATE_NETWORKS = tuple(
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_MAX_URL_LENGTH = 8192
# Anything URL parsers disagree on (backslashes, whitespace, control characters) is refused outright.
_UNSAFE_CHARS = re.compile(r"[\x00-\x20\x7f\\]")
_HOST_NAME = re.compile(r"^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$")


class UrlRefused(LoraplaneError):
    """The URL may not be fetched: the same URL will be refused again."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class HostUnresolvable(TransientError):
    """DNS did not answer for now (EAI_AGAIN); a later try may resolve."""


@dataclass(frozen=True)
class GuardedUrl:
    url: str  # as given: request path and query, and the base for relative redirects
    scheme: str  # "https" or "http"
    host: str  # normalised name (lower case, IDNA, no trailing dot): Host header and TLS SNI
    port: int
    address: str  # the checked address to connect to
    addresses: tuple[str, ...]  # every address the host resolved to; all were checked

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def resolve_host(host: str) -> list[str]:
    """Every address `host` resolves to, in the resolver's order of preference."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        if exc.errno == socket.EAI_AGAIN:
            raise HostUnresolvable(f"DNS did not answer for {host} (try again later)") from exc
        raise UrlRefused(f"{host} does not resolve") from exc
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def check_url(url: str, *, allowed_hosts: Collection[str], resolve: Resolver = resolve_host) -> GuardedUrl:
    """Refuse what we must not fetch (raising `UrlRefused`); answer the address to connect to."""
    if len(url) > _MAX_URL_LENGTH:
        raise UrlRefused(f"the URL is longer than {_MAX_URL_LENGTH} characters")
    if _UNSAFE_CHARS.search(url):
        raise UrlRefused("the URL contains whitespace, control characters or backslashes")
    try:
        parts = urlsplit(url)
        hostname = parts.hostname or ""
    except ValueError:
        raise UrlRefused("the URL cannot be parsed") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        raise UrlRefused(f"only https URLs are accepted, not {scheme or 'a URL without scheme'}")
    if "@" in parts.netloc:
        raise UrlRefused("URLs with credentials (user@host) are not accepted")
    host = _normalise_host(hostname)
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise UrlRefused(f"{host}: invalid port") from None

    if host in METADATA_HOSTS:
        raise UrlRefused(f"{host} is a cloud metadata service")
    literal = _ip_or_none(host)
    if literal is not None and _is_metadata(literal):
        raise UrlRefused(f"{host} is a cloud metadata address")

    allowed = _Allowlist(allowed_hosts)
    match = allowed.match(host)
    if match is None:
        raise UrlRefused(f"{host} is not an allowed host")
    if scheme == "http" and match != "exact":
        raise UrlRefused(f"plain http is accepted only for hosts on the allowlist by name; use https for {host}")

    addresses = [str(literal)] if literal is not None else resolve(host)
    if not addresses:
        raise UrlRefused(f"{host} does not resolve")
    checked: list[str] = []
    for raw in addresses:
        ip = _ip_or_none(raw.split("%", 1)[0])
        if ip is None:
            raise UrlRefused(f"{host} resolved to {raw!r}, which is not an IP address")
        if _is_metadata(ip):
            raise UrlRefused(f"{host} resolves to {ip}, a cloud metadata address")
        reason = None if match == "exact" else non_public_reason(ip)
        if reason is not None:
            raise UrlRefused(f"{host} resolves to {ip}, a {reason} address")
        mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
        checked.append(str(mapped or ip))  # connect to ::ffff:a.b.c.d as a.b.c.d: works without IPv6
    return GuardedUrl(url, scheme, host, port, checked[0], tuple(checked))


def host_allowed(host: str, allowed_hosts: Collection[str]) -> bool:
    """Does `host` match the allowlist (exactly, or as a subdomain of a `.example.com` entry)?"""
    try:
        return _Allowlist(allowed_hosts).match(_normalise_host(host)) is not None
    except UrlRefused:
        return False


def non_public_reason(ip: IPAddress) -> str | None:
    """Why `ip` is not a public address we may connect to (None: it is one)."""
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped
        if mapped is not None:
            inner = non_public_reason(mapped)
            return f"IPv4-mapped {inner}" if inner else None
        embedded = _embedded_ipv4(ip)
        if embedded is not None and (inner := non_public_reason(embedded)):
            return f"{inner} (embedded in IPv6)"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_unspecified:
        return "unspecified"
    if any(ip in net for net in _PRIVATE_NETWORKS):
        return "private"
    if ip.is_reserved:
        return "reserved"
    if not ip.is_global:  # shared (100.64/10), documentation, benchmarking, 0/8 ...
        return "non-global"
    return None


class _Allowlist:
    def __init__(self, entries: Collection[str]) -> None:
        self.exact: set[str] = set()
        self.suffixes: list[str] = []
        for entry in entries:
            raw = entry.strip().lower()
            if raw.startswith("*."):
                raw = raw[1:]
            if raw.startswith("."):
                name = raw.strip(".")
                if name:
                    self.suffixes.append("." + name)
            elif raw:
                self.exact.add(_canonical(raw.strip("[]").rstrip(".")))

    def match(self, host: str) -> str | None:
        if _canonical(host) in self.exact:
            return "exact"
        if any(host.endswith(suffix) for suffix in self.suffixes):
            return "suffix"
        return None


def _normalise_host(host: str) -> str:
    host = host.strip("[]").lower()
    if host.endswith("."):
        host = host[:-1]
    if not host:
        raise UrlRefused("the URL has no host")
    if _ip_or_none(host) is not None:
        return _canonical(host)
    try:
        host = host.encode("idna").decode("ascii")
    except UnicodeError:
        raise UrlRefused("the URL's host is not a valid host name") from None
    if not _HOST_NAME.match(host):
        raise UrlRefused("the URL's host is not a valid host name")
    return host


def _ip_or_none(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _canonical(host: str) -> str:
    ip = _ip_or_none(host)
    return str(ip) if ip is not None else host


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address a gateway would reach for a 6to4 or NAT64 address."""
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _is_metadata(ip: IPAddress) -> bool:
    if ip in METADATA_ADDRESSES:
        return True
    if isinstance(ip, ipaddress.IPv6Address):
        inner = ip.ipv4_mapped or _embedded_ipv4(ip)
        if inner is None and int(ip) >> 32 == 0:  # IPv4-compatible ::a.b.c.d (deprecated)
            inner = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        return inner is not None and inner in METADATA_ADDRESSES
    return False
