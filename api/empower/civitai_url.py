"""The up-front check of a CivitAI URL: everything `infra.url_guard.check_url` checks but DNS.

The address check needs a lookup; the artifacts agent does it (and re-checks every redirect hop)
when it downloads, so an API request never waits on DNS.
"""

from __future__ import annotations

from collections.abc import Collection

from infra.url_guard import UrlRefused, check_url


class _LookupDeferred(Exception):
    """Raised by the resolver: every check before the lookup has passed."""


def _defer(host: str) -> list[str]:
    raise _LookupDeferred(host)


def civitai_url_problem(url: str, allowed_hosts: Collection[str]) -> str | None:
    """Why the URL may not be downloaded (None: it may, as far as can be told without DNS)."""
    try:
        check_url(url, allowed_hosts=allowed_hosts, resolve=_defer)
    except UrlRefused as refused:
        return refused.reason
    except _LookupDeferred:
        return None
    return None
