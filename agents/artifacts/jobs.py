"""Runs the artifacts agent's jobs: one per requested adapter version, reserved LoRA file or added
fileset file. A job's outcome is a command back to the aggregate that asked for it.

Nothing is lost on a crash: a job is found again from the folded log at start-up (every requested
item not yet stored or refused) and run again. Re-running is safe: objects are content-addressed,
and a job's reports carry command ids derived from the id of the event that asked for the job
(`streams.envelope.derived_id`), so the processor drops a re-run's repeats while a new request for
the same bytes under the same name (after a delete or a refusal) gets reports of its own.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Awaitable, Callable
from hashlib import sha256
from pathlib import Path

from minio import Minio

from agents.adapters import Adapter
from agents.artifacts.checks import (
    ADAPTER_CONFIG,
    analysis_of,
    choose_weights,
    part_of_error,
    part_of_problems,
    problems_of,
    rejection_reason,
    validate_weights,
)
from agents.artifacts.sources import (
    Fetched,
    SourceFile,
    fetch_civitai,
    fetch_hf,
    staged_or_stored_key,
    upload_file,
)
from agents.filesets import Fileset
from agents.lora_files import LoraDir
from agents.partition_jobs import PartitionJobs, commands_partition
from agents.state import AgentState
from agents.validation import ArtifactReport, ValidationProblem
from infra.errors import LoraplaneError, is_retriable
from infra.faults import crash_point
from infra.s3 import make_client
from infra.s3_objects import (
    NoLongerStored,
    remove_quietly,
    settle_upload,
    store_blob_from_file,
    store_blob_from_object,
    stored_home,
)
from infra.secrets import SecretBox
from infra.settings import Settings
from infra.staging import UPLOADS_PREFIX, discard_staged, release_staged
from streams import adapters, filesets, lora_files
from streams.adapters import (
    AdapterApi,
    AdapterSpec,
    AdapterStatus,
    CivitaiSource,
    FilesetSource,
    HfSource,
    RejectedPart,
    UploadSource,
)
from streams.artifacts import Artifact, Progress, Provenance, StoredFile
from streams.envelope import SYSTEM_ACTOR, Envelope, Payload, derived_id
from streams.outcomes import CommandRejected
from streams.serialization import envelope_for

log = logging.getLogger(__name__)

Send = Callable[[Envelope], Awaitable[None]]
PROGRESS_STEPS = 4  # at most this many download progress events per version (25 %, 50 %, ...)
PROGRESS_MIN_INTERVAL_S = 1.0


class Refused(LoraplaneError):
    """The artifact is refused: the reason goes to the caller as is."""

    def __init__(self, reason: str, part: RejectedPart = RejectedPart.SOURCE) -> None:
        super().__init__(reason)
        self.part = part


class ArtifactJobs:
    def __init__(self, settings: Settings, send: Send, secrets: SecretBox | None = None) -> None:
        self._settings = settings
        self._send = send
        self._secrets = secrets
        self._bucket = settings.s3_bucket
        self._client: Minio | None = None
        self._state: AgentState | None = None
        self._slots = asyncio.Semaphore(settings.artifact_jobs)
        self._jobs = PartitionJobs("artifact job")

    @property
    def client(self) -> Minio:
        if self._client is None:
            self._client = make_client(self._settings)
        return self._client

    # --- Observer -------------------------------------------------------------------------------

    def started(self, state: AgentState) -> None:
        self._state = state

    def owned(self, partitions: frozenset[int]) -> None:
        """Run the unfinished jobs of the aggregates whose commands partition this worker owns (all of them after a
        crash of the worker that ran them, or one of another worker's, taken over); stop the jobs it gave up: their
        new owner runs them again, and its reports, with the same ids, are the ones that count."""
        self._jobs.keep_only(partitions)
        state = self._state
        if state is None:
            return
        for (aggregate_type, aggregate_id), entry in list(state.entries.items()):
            if commands_partition(aggregate_id) not in partitions:
                continue
            value = entry.value
            if aggregate_type == adapters.AGGREGATE and isinstance(value, Adapter):
                for version in value.versions:
                    if not version.finished:
                        self._start_adapter(aggregate_id, version.version, version.spec, version.requested_by, None)
            elif aggregate_type == lora_files.AGGREGATE and isinstance(value, LoraDir):
                for file in value.files.values():
                    if not file.stored:
                        self._start_lora_file(
                            aggregate_id,
                            file.partial_path,
                            file.filename,
                            file.staged_key,
                            file.sha256,
                            file.size,
                            file.requested_by,
                            None,
                        )
            elif aggregate_type == filesets.AGGREGATE and isinstance(value, Fileset):
                for f in value.files.values():
                    if f.stored is None:
                        self._start_fileset_file(
                            aggregate_id, f.path, f.staged_key, f.sha256, f.size, f.requested_by, None
                        )

    def decided(self, event: Envelope, command: Envelope) -> None:
        payload = event.payload
        if isinstance(payload, CommandRejected):
            self._discard_refused_upload(command)
        elif isinstance(payload, adapters.AdapterRequested):
            self._start_adapter(event.aggregate_id, payload.version, payload.spec, event.id, event.correlation_id)
        elif isinstance(payload, lora_files.LoraFileReserved):
            self._start_lora_file(
                event.aggregate_id,
                payload.partial_path,
                payload.filename,
                payload.staged_key,
                payload.sha256,
                payload.size,
                event.id,
                event.correlation_id,
            )
        elif isinstance(payload, filesets.FilesetFileAdded):
            self._start_fileset_file(
                event.aggregate_id,
                payload.path,
                payload.staged_key,
                payload.sha256,
                payload.size,
                event.id,
                event.correlation_id,
            )

    def _discard_refused_upload(self, command: Envelope) -> None:
        """A refused upload (a taken name with use_safe_filename=false) hands its staged bytes to no job:
        remove them here, so an upload answered 202 before the refusal leaves nothing behind."""
        upload = command.payload
        if isinstance(upload, lora_files.UploadLoraFile | filesets.AddFilesetFile):
            key = upload.staged_key
            self._spawn(
                f"discard:{key}",
                lambda: asyncio.to_thread(discard_staged, self.client, self._bucket, key),
                command.aggregate_id,
            )

    async def stop(self) -> None:
        await self._jobs.stop()

    # --- scheduling -----------------------------------------------------------------------------

    def _spawn(self, key: str, work: Callable[[], Awaitable[None]], aggregate_id: str) -> None:
        async def in_a_slot() -> None:
            async with self._slots:
                await work()

        self._jobs.spawn(key, aggregate_id, in_a_slot)

    def _start_adapter(
        self, aggregate_id: str, version: int, spec: AdapterSpec, cause: str, correlation: str | None
    ) -> None:
        key = f"adapter:{aggregate_id}:{version}"
        reporter = _Reporter(self._send, key, cause, adapters.AGGREGATE, aggregate_id, correlation)
        self._spawn(key, lambda: self._adapter_job(reporter, aggregate_id, version, spec), aggregate_id)

    def _start_lora_file(
        self,
        directory: str,
        partial_path: str,
        filename: str,
        staged_key: str,
        digest: str,
        size: int,
        cause: str,
        correlation: str | None,
    ) -> None:
        key = f"lora_file:{partial_path}:{digest}:{cause}"
        reporter = _Reporter(self._send, key, cause, lora_files.AGGREGATE, directory, correlation)
        self._spawn(
            key, lambda: self._lora_file_job(reporter, partial_path, filename, staged_key, digest, size), directory
        )

    def _start_fileset_file(
        self,
        fileset_id: str,
        path: str,
        staged_key: str,
        digest: str,
        size: int,
        cause: str,
        correlation: str | None,
    ) -> None:
        key = f"fileset:{fileset_id}:{path}:{digest}:{cause}"
        reporter = _Reporter(self._send, key, cause, filesets.AGGREGATE, fileset_id, correlation)
        self._spawn(key, lambda: self._fileset_job(reporter, path, staged_key, digest, size), fileset_id)

    # --- jobs -----------------------------------------------------------------------------------

    async def _adapter_job(self, reporter: _Reporter, aggregate_id: str, version: int, spec: AdapterSpec) -> None:
        workdir = self._workdir(reporter.key)
        try:
            outcome = await self._attempts(
                reporter.key, lambda: self._adapter_once(reporter, aggregate_id, version, spec, workdir)
            )
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        if isinstance(outcome, LoraplaneError):
            failed = adapters.FailAdapter(version=version, reason=str(outcome), part=part_of_error(outcome))
            await reporter.send(failed, "fail")
        else:
            await reporter.send(outcome, "complete")

    async def _adapter_once(
        self, reporter: _Reporter, aggregate_id: str, version: int, spec: AdapterSpec, workdir: Path
    ) -> Payload:
        source = spec.source
        await reporter.progress(version, AdapterStatus.FETCHING, Progress())
        fetched = await self._fetch(reporter, aggregate_id, version, source, workdir)
        await reporter.progress(
            version, AdapterStatus.VALIDATING, Progress(bytes_done=sum(f.size for f in fetched.files))
        )
        by_path = {f.path: f for f in fetched.files}
        weights_path = choose_weights(by_path)
        if weights_path is None:
            raise Refused(
                f"no adapter weights (.safetensors, .bin, .pt, .pth, .ckpt) among {sorted(by_path) or 'no files'}"
            )
        weights = by_path[weights_path]
        config = by_path.get(ADAPTER_CONFIG)
        config_bytes = await asyncio.to_thread(self._read_all, config) if config else None
        report = await asyncio.to_thread(self._validate, weights, config_bytes, _expected_base_model(spec))
        problems = problems_of(report)
        if problems:
            raise Refused(rejection_reason(problems, weights.path), part_of_problems(problems))
        assert isinstance(report, ArtifactReport)
        staged = source.staged_key if isinstance(source, UploadSource) else None
        stored = [await asyncio.to_thread(self._store, f, staged) for f in fetched.files]
        return adapters.CompleteAdapter(
            version=version,
            artifact=Artifact(
                bucket=self._bucket,
                files=tuple(stored),
                sha256=weights.sha256,
                size=weights.size,
                total_size=sum(f.size for f in stored),
            ),
            analysis=analysis_of(report, config_bytes),
            provenance=fetched.provenance,
        )

    async def _fetch(
        self, reporter: _Reporter, aggregate_id: str, version: int, source: object, workdir: Path
    ) -> Fetched:
        if isinstance(source, HfSource):
            return await fetch_hf(source, aggregate_id, workdir, self._settings, self._secrets)
        if isinstance(source, CivitaiSource):
            return await fetch_civitai(source, workdir, self._settings, reporter.download_progress(version))
        if isinstance(source, UploadSource):
            key = await asyncio.to_thread(
                staged_or_stored_key, self.client, self._bucket, source.staged_key, source.sha256
            )
            if key is None:
                raise Refused(f"the uploaded file {source.filename!r} is no longer in storage; upload it again")
            return Fetched((upload_file(source, key),), Provenance(filename=source.filename))
        if isinstance(source, FilesetSource):
            return self._fileset_files(source.fileset)
        raise Refused(f"unknown source {source!r}")

    def _fileset_files(self, fileset: str) -> Fetched:
        entry = self._state.get(filesets.AGGREGATE, fileset).value if self._state else None
        if not isinstance(entry, Fileset) or not entry.files:
            raise Refused(f"fileset {fileset!r} does not exist or holds no files")
        if not entry.complete:
            raise _NotYet(f"files of fileset {fileset!r} are still being stored")
        files = tuple(
            SourceFile(f.path, f.stored.size, f.stored.sha256, key=f.stored.key)
            for f in entry.files.values()
            if f.stored is not None
        )
        return Fetched(files, Provenance(source_url=f"fileset://{fileset}"))

    async def _lora_file_job(
        self, reporter: _Reporter, partial_path: str, filename: str, staged_key: str, digest: str, size: int
    ) -> None:
        async def once() -> Payload:
            key = await asyncio.to_thread(staged_or_stored_key, self.client, self._bucket, staged_key, digest)
            if key is None:
                raise Refused("the uploaded bytes are no longer in storage; upload the file again")
            file = SourceFile(filename, size, digest, key=key)
            report = await asyncio.to_thread(self._validate, file, None, None)
            problems = problems_of(report)
            if problems:
                raise Refused(rejection_reason(problems))
            assert isinstance(report, ArtifactReport)
            stored = await asyncio.to_thread(self._store, file, staged_key)
            return lora_files.CompleteLoraFile(partial_path=partial_path, file=stored, analysis=analysis_of(report))

        outcome = await self._attempts(reporter.key, once)
        if isinstance(outcome, LoraplaneError):
            await asyncio.to_thread(discard_staged, self.client, self._bucket, staged_key, digest)
            await reporter.send(lora_files.FailLoraFile(partial_path=partial_path, reason=str(outcome)), "fail")
        else:
            await reporter.send(outcome, "complete")

    async def _fileset_job(self, reporter: _Reporter, path: str, staged_key: str, digest: str, size: int) -> None:
        async def once() -> Payload:
            key = await asyncio.to_thread(staged_or_stored_key, self.client, self._bucket, staged_key, digest)
            if key is None:
                raise Refused("the uploaded bytes are no longer in storage")
            stored = await asyncio.to_thread(self._store, SourceFile(path, size, digest, key=key), staged_key)
            return filesets.StoreFilesetFile(file=stored)

        outcome = await self._attempts(reporter.key, once)
        if isinstance(outcome, LoraplaneError):
            log.error("fileset file %s not stored: %s", path, outcome)
            return
        await reporter.send(outcome, "stored")

    # --- helpers --------------------------------------------------------------------------------

    async def _attempts(self, key: str, once: Callable[[], Awaitable[Payload]]) -> Payload | LoraplaneError:
        """Run `once` until it succeeds, is refused, or transient failures use up the attempts."""
        attempts = self._settings.artifact_attempts
        delay = 0.5
        for attempt in range(1, attempts + 1):
            try:
                return await once()
            except LoraplaneError as exc:
                if not is_retriable(exc) or attempt == attempts:
                    return exc if not is_retriable(exc) else LoraplaneError(f"{exc} (gave up after {attempt} tries)")
                log.warning("artifact job %s: %s; trying again in %.1fs", key, exc, delay)
            except Exception as exc:
                if not is_retriable(exc) and not _is_s3_transport(exc):
                    # A fault of ours (or S3 refusing us) repeats on every run: refuse the item with a pointer
                    # to the log rather than leave it `fetching` for ever.
                    log.exception("artifact job %s failed", key)
                    return LoraplaneError(
                        f"the artifact could not be processed ({type(exc).__name__}); see the worker log"
                    )
                if attempt == attempts:
                    return LoraplaneError(f"storage unavailable: {type(exc).__name__} (gave up after {attempt} tries)")
                log.warning("artifact job %s: %s; trying again in %.1fs", key, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
        raise AssertionError("unreachable")

    def _workdir(self, key: str) -> Path:
        path = self._settings.data_dir / "work" / "artifacts" / sha256(key.encode()).hexdigest()[:24]
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def _read_all(self, file: SourceFile) -> bytes:
        with file.open(self.client, self._bucket) as read:
            return read.read()

    def _validate(
        self, file: SourceFile, config: bytes | None, base_model: str | None
    ) -> ArtifactReport | ValidationProblem:
        with file.open(self.client, self._bucket) as read:
            return validate_weights(read, file.size, adapter_config=config, expected_base_model=base_model)

    def _store(self, file: SourceFile, staged_key: str | None = None) -> StoredFile:
        """Store one validated file once by content; the key of its home goes on the event.

        A download is written to its content address unless its bytes have a home already. An upload (`staged_key`)
        stays where the API streamed it, unless its bytes have a home already: then it is removed. Its staging marker
        goes first, so the staging sweep never removes bytes a name may point at; a crash after that finds the upload,
        or its home, again on the next run. A file already in the bucket under another key is stored already (a
        fileset's file). An upload staged by an earlier version (`staging/{uuid}`) is copied to its content address.
        """
        client, bucket, staged = self.client, self._bucket, file.key
        if file.local is not None:
            key = store_blob_from_file(client, bucket, file.local, file.sha256)
        elif staged is None or staged != staged_key:
            assert staged is not None
            key = staged
        elif staged.startswith(UPLOADS_PREFIX):
            release_staged(client, bucket, staged)
            try:
                key = settle_upload(client, bucket, staged, file.sha256)
            except NoLongerStored:
                raise Refused("the uploaded bytes are no longer in storage; upload the file again") from None
            if key != staged:
                remove_quietly(client, bucket, staged)  # equal bytes have a home already
            crash_point(self._settings, "upload_stored", {file.path})
        else:
            key = stored_home(client, bucket, file.sha256) or store_blob_from_object(
                client, bucket, staged, file.sha256
            )
            release_staged(client, bucket, staged)
        return StoredFile(path=file.path, key=key, sha256=file.sha256, size=file.size)


def _expected_base_model(spec: AdapterSpec) -> str | None:
    """The base model the config must name. A NeMo `model` is a NeMo entity reference
    (`meta/llama-3.2-1b`), not the Hugging Face id a PEFT config holds, so it is not compared."""
    return None if spec.api is AdapterApi.NEMO else spec.base_model


class _NotYet(LoraplaneError):
    retriable = True


def _is_s3_transport(exc: Exception) -> bool:
    import urllib3.exceptions

    return isinstance(exc, urllib3.exceptions.HTTPError | OSError)


class _Reporter:
    """Sends one job's commands with ids derived from the event that asked for the job (`cause`), so a re-run's
    reports are dropped as repeats."""

    def __init__(
        self, send: Send, key: str, cause: str, aggregate_type: str, aggregate_id: str, correlation: str | None
    ) -> None:
        self._send = send
        self.key = key
        self._cause = cause
        self._aggregate_type = aggregate_type
        self._aggregate_id = aggregate_id
        self._correlation = correlation
        self._last_step = -1
        self._last_at = 0.0
        self._pending: set[asyncio.Task[None]] = set()

    async def send(self, payload: Payload, step: str) -> None:
        command = envelope_for(
            payload,
            aggregate_id=self._aggregate_id,
            actor=SYSTEM_ACTOR,
            command_id=derived_id(self._cause, step),
            correlation_id=self._correlation,
        )
        await self._send(command)

    async def progress(self, version: int, status: AdapterStatus, progress: Progress) -> None:
        await self.send(
            adapters.ReportAdapterProgress(version=version, status=status, progress=progress),
            f"{status.value}:{progress.bytes_done}",
        )

    def download_progress(self, version: int) -> Callable[[int, int | None], None]:
        """A callback for a download: reports every quarter of a known size, at most once a second."""
        loop = asyncio.get_running_loop()

        def report(done: int, total: int | None) -> None:
            if not total:
                return
            step = min(PROGRESS_STEPS, done * PROGRESS_STEPS // total)
            now = time.monotonic()
            if step <= self._last_step or (step < PROGRESS_STEPS and now - self._last_at < PROGRESS_MIN_INTERVAL_S):
                return
            self._last_step, self._last_at = step, now
            update = Progress(bytes_done=done, bytes_total=total)
            task = loop.create_task(self.progress(version, AdapterStatus.FETCHING, update))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

        return report
