"""Fetching a PEFT adapter from a Hugging Face Hub repository with the `huggingface_hub` client.

The revision (branch, tag or sha) is pinned to its commit sha first, then only the adapter's files are
downloaded at that sha. Hub errors become our own, with messages fit for the user and never the token.
Synchronous: callers run it in a thread.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import httpx
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.repocard import metadata_load
from tqdm.auto import tqdm

from infra.errors import LoraplaneError, TransientError

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
PICKLED_WEIGHTS = "adapter_model.bin"
MODEL_CARD = "README.md"
_TIMEOUT_S = 30.0
_COMMIT_SHA = re.compile(r"[0-9a-f]{40}")


class HubError(LoraplaneError):
    """The fetch cannot succeed as asked; retrying will not help."""


class HubRepoNotFound(HubError):
    pass


class HubTokenRefused(HubError):
    pass


class HubGatedRepo(HubError):
    pass


class HubRevisionNotFound(HubError):
    pass


class NoAdapterFiles(HubError):
    pass


class AdapterTooLarge(HubError):
    pass


class HubUnavailable(TransientError):
    """The Hub did not answer, answered 429/5xx, or a transfer broke off: a later try may succeed."""


class HfFile(NamedTuple):
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class HfFetchResult:
    repo_id: str
    requested_revision: str | None  # as asked; None means the repository's default branch
    commit_sha: str
    files: tuple[HfFile, ...]
    license: str | None


def fetch_adapter(
    repo_id: str,
    revision: str | None,
    token: str | None,
    dest_dir: Path,
    *,
    endpoint: str | None = None,
    max_bytes: int,
) -> HfFetchResult:
    """Download `adapter_config.json`, the weights and README.md of `repo_id@revision` into `dest_dir`.

    Weights are the top-level `*.safetensors`, or `adapter_model.bin` when there is none. `max_bytes` is
    checked against the sizes the Hub lists before anything is downloaded; each file on disk must then
    have its listed size (and LFS sha256), so the limit holds for what was written too. The files
    land at `dest_dir / path` (`result.files`); huggingface_hub keeps its own metadata under
    `dest_dir/.cache/`, which lets a retry skip files already complete. `endpoint` None means the
    client's default: `HF_ENDPOINT`, else https://huggingface.co.
    """
    # token=False: never fall back to a token of this machine (HF_TOKEN, `hf auth login`): a user who
    # gives none must not read what the operator's account can.
    auth: str | bool = token or False
    where = f"{repo_id}@{revision}" if revision else repo_id
    with _hub_errors(repo_id, revision, token):
        info = HfApi(endpoint=endpoint, token=auth, library_name="loraplane").model_info(
            repo_id, revision=revision, files_metadata=True, timeout=_TIMEOUT_S
        )
        commit = info.sha
        if not commit or not _COMMIT_SHA.fullmatch(commit):
            raise HubError(f"the Hub did not name the commit of {where}")
        where = f"{repo_id}@{revision or commit}"
        chosen = _choose_files(info.siblings or [], where)
        total = sum(size for _, size, _ in chosen)
        if total > max_bytes:
            raise AdapterTooLarge(f"the adapter files of {where} are {total} bytes, more than the limit of {max_bytes}")
        dest_dir.mkdir(parents=True, exist_ok=True)
        files = []
        for path, size, lfs_sha256 in chosen:
            local = hf_hub_download(
                repo_id,
                path,
                revision=commit,
                local_dir=dest_dir,
                token=auth,
                endpoint=endpoint,
                etag_timeout=_TIMEOUT_S,
                tqdm_class=_NoProgress,
            )
            files.append(_verify(Path(local), path, size, lfs_sha256, where))
    log.info("fetched %s (commit %s): %s", where, commit, ", ".join(f.path for f in files))
    return HfFetchResult(repo_id, revision, commit, tuple(files), _license(info, dest_dir / MODEL_CARD))


def _choose_files(siblings: list[Any], where: str) -> list[tuple[str, int, str | None]]:
    """(path, size, LFS sha256) of the adapter's files: top-level only, so checkpoints in folders stay."""
    listed: dict[str, tuple[str, int, str | None]] = {}
    for sibling in siblings:
        path = sibling.rfilename
        if "/" in path or "\\" in path or path in ("", ".", ".."):
            continue
        lfs = sibling.lfs
        size = sibling.size if sibling.size is not None else (lfs.size if lfs is not None else None)
        if size is None:
            raise HubError(f"the Hub did not list the size of {path} in {where}")
        listed[path] = (path, int(size), lfs.sha256 if lfs is not None else None)
    weights = [listed[p] for p in sorted(listed) if p.endswith(".safetensors")]
    if not weights and PICKLED_WEIGHTS in listed:
        weights = [listed[PICKLED_WEIGHTS]]
    if ADAPTER_CONFIG not in listed or not weights:
        raise NoAdapterFiles(
            f"no adapter files in {where}: expected {ADAPTER_CONFIG} and adapter_model.safetensors at the top level"
        )
    card = [listed[MODEL_CARD]] if MODEL_CARD in listed else []
    return [listed[ADAPTER_CONFIG], *weights, *card]


def _verify(local: Path, path: str, size: int, lfs_sha256: str | None, where: str) -> HfFile:
    digest = hashlib.sha256()
    with local.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    actual = local.stat().st_size
    if actual != size or (lfs_sha256 is not None and digest.hexdigest() != lfs_sha256):
        raise HubUnavailable(f"{path} from {where} arrived damaged (size or sha256 differs from the Hub's listing)")
    return HfFile(path, actual, digest.hexdigest())


def _license(info: Any, readme: Path) -> str | None:
    data: Any = info.card_data
    license_ = getattr(data, "license", None) if data is not None else None
    license_name = getattr(data, "license_name", None) if data is not None else None
    if license_ is None and readme.is_file():
        try:
            meta = metadata_load(readme) or {}
        except Exception:  # a model card whose YAML does not parse has no licence we can read
            meta = {}
        license_, license_name = meta.get("license"), meta.get("license_name")
    if isinstance(license_, list):
        license_ = ", ".join(str(x) for x in license_)
    if license_ == "other" and license_name:
        return str(license_name)
    return str(license_) if license_ else None


@contextmanager
def _hub_errors(repo_id: str, revision: str | None, token: str | None) -> Iterator[None]:
    """Hub client errors raised inside become our own (`_translate`); ours and unknown ones pass as they are."""
    try:
        yield
    except LoraplaneError:
        raise
    except Exception as exc:
        translated = _translate(exc, repo_id, revision, token)
        if translated is None:
            raise
        raise translated from None


def _translate(exc: Exception, repo_id: str, revision: str | None, token: str | None) -> LoraplaneError | None:
    """One user-facing error per Hub failure (None: not a Hub failure); the token never enters a message."""
    if isinstance(exc, GatedRepoError):
        if token:
            return HubGatedRepo(
                f"repository {repo_id} is gated: accept its conditions on the Hub with the token's account"
            )
        return HubGatedRepo(f"repository {repo_id} is gated: pass hf_token of an account that accepted its conditions")
    if isinstance(exc, RepositoryNotFoundError):
        if token:
            return HubRepoNotFound(f"repository {repo_id} not found, or hf_token has no access to it")
        return HubRepoNotFound(f"repository {repo_id} not found or private: pass hf_token")
    if isinstance(exc, RevisionNotFoundError):
        return HubRevisionNotFound(f"revision {revision} not found in repo {repo_id}")
    if isinstance(exc, HFValidationError):
        return HubError(f"{repo_id!r} is not a valid repository id")
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        status = exc.response.status_code
        if status in (401, 403):
            if token:
                return HubTokenRefused(f"the token was refused by the Hub (HTTP {status}) for {repo_id}")
            return HubRepoNotFound(f"repository {repo_id} not found or private: pass hf_token")
        if status == 429 or status >= 500:
            return HubUnavailable(f"the Hub is unavailable for now (HTTP {status})")
        if status == 404:
            return HubError(f"the Hub answered 404 for {repo_id}")
        return HubError(f"the Hub answered HTTP {status} for {repo_id}")
    if isinstance(exc, EntryNotFoundError) and not isinstance(exc, LocalEntryNotFoundError):
        return HubError(f"a file of {repo_id} listed by the Hub could not be found")
    if isinstance(exc, LocalEntryNotFoundError | httpx.TransportError | ConnectionError | TimeoutError):
        return HubUnavailable(f"the Hub could not be reached ({type(exc).__name__})")
    if isinstance(exc, OSError) and "Consistency check failed" in str(exc):
        return HubUnavailable(f"a download from {repo_id} broke off; try again")
    return None


class _NoProgress(tqdm):
    """No progress bars in a service's logs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


# Files of a model repository vLLM needs; other files (other formats, images, training state) stay on the Hub.
MODEL_PATTERNS = (
    "*.json",
    "*.safetensors",
    "*.model",
    "*.tiktoken",
    "*.txt",
    "*.jinja",  # chat templates, as transformers >= 4.43 saves them (chat_template.jinja)
)


def fetch_model(
    repo_id: str, revision: str | None, token: str | None, cache_dir: Path, *, endpoint: str | None = None
) -> tuple[str, Path]:
    """The commit `repo_id@revision` resolves to, and a local directory holding its weights, config and tokenizer.

    The directory is `cache_dir/<repo>/<commit>`, so one commit is downloaded once per node; a retry resumes. Raises
    our Hub errors (never naming the token)."""
    auth: str | bool = token or False
    with _hub_errors(repo_id, revision, token):
        info = HfApi(endpoint=endpoint, token=auth, library_name="loraplane").model_info(
            repo_id, revision=revision, timeout=_TIMEOUT_S
        )
        commit = info.sha
        if not commit or not _COMMIT_SHA.fullmatch(commit):
            raise HubError(f"the Hub did not name the commit of {repo_id}@{revision or 'main'}")
        dest = cache_dir / repo_id.replace("/", "--") / commit
        if (dest / ".complete").exists():
            return commit, dest
        snapshot_download(
            repo_id,
            revision=commit,
            local_dir=dest,
            token=auth,
            endpoint=endpoint,
            allow_patterns=list(MODEL_PATTERNS),
            etag_timeout=_TIMEOUT_S,
            tqdm_class=_NoProgress,
        )
    if not (dest / "config.json").is_file():
        raise HubError(f"{repo_id}@{revision or commit} has no config.json: it is not a Transformers model")
    (dest / ".complete").touch()
    log.info("fetched model %s (commit %s) into %s", repo_id, commit, dest)
    return commit, dest
