"""Pure decisions of the adapter registry (adapters, seed 004's file directories, NeMo filesets):
decide(state, command) -> events and evolve(state, event) -> state, over real envelopes, without Kafka."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

import streams.catalog  # noqa: F401
from agents import adapters, filesets, lora_files
from agents.aggregate import Aggregate, Rejected
from streams.adapters import (
    AdapterApi,
    AdapterChanges,
    AdapterDeleted,
    AdapterProgressed,
    AdapterRejected,
    AdapterRequested,
    AdapterSpec,
    AdapterStatus,
    AdapterStored,
    AdapterUpdated,
    CompleteAdapter,
    DeleteAdapter,
    FailAdapter,
    FilesetSource,
    HfSource,
    RegisterAdapter,
    ReportAdapterProgress,
    UpdateAdapter,
)
from streams.artifacts import Analysis, Artifact, Progress, Provenance, StoredFile, blob_key
from streams.envelope import SYSTEM_ACTOR, Payload
from streams.filesets import AddFilesetFile, FilesetFileAdded, FilesetFileStored, StoreFilesetFile
from streams.lora_files import (
    CompleteLoraFile,
    DeleteLoraFile,
    FailLoraFile,
    LoraFileBinned,
    LoraFileRejected,
    LoraFileReserved,
    LoraFileRestored,
    LoraFileStored,
    RestoreLoraFile,
    UploadLoraFile,
)
from streams.naming import EntityType
from streams.outcomes import RejectionCode
from streams.serialization import decode, encode, envelope_for
from streams.workspaces import CreateWorkspace

SHA_A = "a" * 64
SHA_B = "b" * 64


class Folded:
    """One aggregate's state, moved on by deciding commands and evolving over the resulting events."""

    def __init__(self, aggregate: Aggregate, aggregate_id: str) -> None:
        self.aggregate = aggregate
        self.aggregate_id = aggregate_id
        self.state: Any = None
        self.version = 0

    def decide(self, payload: Payload) -> Sequence[Payload]:
        command = envelope_for(payload, aggregate_id=self.aggregate_id, actor=SYSTEM_ACTOR)
        return self.aggregate.decide(self.state, command)

    def apply(self, payload: Payload) -> None:
        self.version += 1
        event = envelope_for(
            payload, aggregate_id=self.aggregate_id, actor=SYSTEM_ACTOR, aggregate_version=self.version, command_id="c"
        )
        self.state = self.aggregate.evolve(self.state, event)

    def handle(self, payload: Payload) -> Sequence[Payload]:
        """Decide, then fold what was decided (as the command processor does)."""
        decided = self.decide(payload)
        for event in decided:
            self.apply(event)
        return decided

    def refused(self, payload: Payload) -> Rejected:
        with pytest.raises(Rejected) as rejected:
            self.decide(payload)
        return rejected.value


# --- adapters --------------------------------------------------------------------------------------


def nemo_spec(name: str = "my-lora", **overrides: Any) -> AdapterSpec:
    values: dict[str, Any] = {
        "workspace": "ws",
        "name": name,
        "source": FilesetSource(fileset="ws/files"),
        "base_model": "meta/llama-3.2-1b",
        "api": AdapterApi.NEMO,
    }
    return AdapterSpec(**(values | overrides))


def artifact() -> Artifact:
    file = StoredFile(path="adapter_model.safetensors", key=blob_key(SHA_A), sha256=SHA_A, size=10)
    return Artifact(bucket="b", files=(file,), sha256=SHA_A, size=10, total_size=10)


def ready(version: int) -> CompleteAdapter:
    return CompleteAdapter(
        version=version,
        artifact=artifact(),
        analysis=Analysis(container="safetensors", format="peft", rank=8),
        provenance=Provenance(source_url="fileset://ws/files"),
    )


def test_a_nemo_name_is_registered_once_and_taken_until_deleted() -> None:
    adapter = Folded(adapters.ADAPTERS, "ws/my-lora")
    assert adapter.handle(RegisterAdapter(spec=nemo_spec(), new_version_if_exists=False)) == [
        AdapterRequested(version=1, spec=nemo_spec())
    ]
    assert adapter.state.latest.status is AdapterStatus.REQUESTED
    conflict = adapter.refused(RegisterAdapter(spec=nemo_spec(), new_version_if_exists=False))
    assert conflict.code is RejectionCode.CONFLICT and conflict.field == "name"
    assert "already exists in workspace 'ws'" in conflict.reason

    [deleted] = adapter.handle(DeleteAdapter(workspace="ws", name="my-lora"))
    assert deleted == AdapterDeleted(workspace="ws", name="my-lora") and not adapter.state.live
    # The name is free again; version numbers keep counting, so old objects and events are never reused.
    assert adapter.handle(RegisterAdapter(spec=nemo_spec(), new_version_if_exists=False)) == [
        AdapterRequested(version=2, spec=nemo_spec())
    ]
    assert adapter.state.live and [v.version for v in adapter.state.versions] == [1, 2]


def test_a_rejected_create_frees_its_nemo_name_but_one_in_progress_holds_it() -> None:
    adapter = Folded(adapters.ADAPTERS, "ws/my-lora")
    adapter.handle(RegisterAdapter(spec=nemo_spec(), new_version_if_exists=False))
    assert (
        adapter.refused(RegisterAdapter(spec=nemo_spec(), new_version_if_exists=False)).code is RejectionCode.CONFLICT
    )
    adapter.handle(FailAdapter(version=1, reason="rank mismatch"))
    assert adapter.state.latest.status is AdapterStatus.REJECTED and adapter.state.latest.reason == "rank mismatch"
    # NeMo answers a refused create with 422 and keeps nothing: the caller fixes the files and creates again.
    assert adapter.handle(RegisterAdapter(spec=nemo_spec(), new_version_if_exists=False)) == [
        AdapterRequested(version=2, spec=nemo_spec())
    ]


def test_empower_registrations_make_new_versions() -> None:
    spec = nemo_spec("org/repo", api=AdapterApi.EMPOWER, source=HfSource(repo_id="org/repo"), base_model=None)
    adapter = Folded(adapters.ADAPTERS, "default/org/repo")
    adapter.handle(RegisterAdapter(spec=spec, new_version_if_exists=True))
    assert adapter.handle(RegisterAdapter(spec=spec, new_version_if_exists=True)) == [
        AdapterRequested(version=2, spec=spec)
    ]


@pytest.mark.parametrize(
    ("name", "api", "valid"),
    [
        ("a.b-c_D9", AdapterApi.NEMO, True),
        ("x" * 255, AdapterApi.NEMO, True),
        ("x" * 256, AdapterApi.NEMO, False),
        ("org/repo", AdapterApi.NEMO, False),  # NeMo names hold no slash
        ("a b", AdapterApi.NEMO, False),
        ("é", AdapterApi.NEMO, False),  # the seed spells out a-z, A-Z: ASCII only
        ("org/repo", AdapterApi.EMPOWER, True),  # an HF repo id as the name
        ("a/b/c", AdapterApi.EMPOWER, False),
        ("", AdapterApi.DEEPINFRA, False),
    ],
)
def test_names_per_api(name: str, api: AdapterApi, valid: bool) -> None:
    adapter = Folded(adapters.ADAPTERS, f"ws/{name}")
    command = RegisterAdapter(spec=nemo_spec(name, api=api), new_version_if_exists=api is not AdapterApi.NEMO)
    if valid:
        assert adapter.decide(command) == [AdapterRequested(version=1, spec=nemo_spec(name, api=api))]
    else:
        rejected = adapter.refused(command)
        assert rejected.code is RejectionCode.INVALID and rejected.field == "name"


def test_reports_move_a_version_to_ready_once() -> None:
    adapter = Folded(adapters.ADAPTERS, "ws/my-lora")
    assert adapter.refused(ready(1)).code is RejectionCode.NOT_FOUND  # never requested
    adapter.handle(RegisterAdapter(spec=nemo_spec(), new_version_if_exists=False))
    progress = ReportAdapterProgress(version=1, status=AdapterStatus.FETCHING, progress=Progress(bytes_done=5))
    assert adapter.handle(progress) == [
        AdapterProgressed(version=1, status=AdapterStatus.FETCHING, progress=Progress(bytes_done=5))
    ]
    assert adapter.state.latest.status is AdapterStatus.FETCHING and adapter.state.latest.progress.bytes_done == 5
    [done] = adapter.handle(ready(1))
    assert isinstance(done, AdapterStored) and done.analysis.rank == 8
    latest = adapter.state.latest
    assert latest.status is AdapterStatus.READY and latest.artifact == artifact() and latest.finished
    # A job that ran twice reports again: nothing changes, in either direction.
    assert adapter.decide(ready(1)) == []
    assert adapter.decide(FailAdapter(version=1, reason="late")) == []
    assert adapter.decide(progress) == []
    assert adapter.refused(ready(2)).code is RejectionCode.NOT_FOUND


def test_a_failure_rejects_the_version_with_its_reason() -> None:
    adapter = Folded(adapters.ADAPTERS, "ws/my-lora")
    adapter.handle(RegisterAdapter(spec=nemo_spec(), new_version_if_exists=False))
    assert adapter.handle(FailAdapter(version=1, reason="no weights")) == [
        AdapterRejected(version=1, reason="no weights")
    ]
    assert adapter.decide(ready(1)) == []  # a rejected version never becomes ready
    assert adapter.state.latest.artifact is None


def test_updates_change_only_the_fields_sent_and_a_new_registration_resets_them() -> None:
    adapter = Folded(adapters.ADAPTERS, "ws/my-lora")
    missing = adapter.refused(UpdateAdapter(workspace="ws", name="my-lora", changes=AdapterChanges(enabled=False)))
    assert missing.code is RejectionCode.NOT_FOUND and missing.field == "name"
    adapter.handle(RegisterAdapter(spec=nemo_spec(description="first"), new_version_if_exists=False))
    adapter.handle(UpdateAdapter(workspace="ws", name="my-lora", changes=AdapterChanges(description="second")))
    [updated] = adapter.handle(
        UpdateAdapter(workspace="ws", name="my-lora", changes=AdapterChanges(enabled=False, lora_config={"r": 8}))
    )
    assert updated == AdapterUpdated(changes=AdapterChanges(enabled=False, lora_config={"r": 8}))
    assert adapter.state.changes == AdapterChanges(description="second", enabled=False, lora_config={"r": 8})
    adapter.handle(DeleteAdapter(workspace="ws", name="my-lora"))
    assert adapter.refused(DeleteAdapter(workspace="ws", name="my-lora")).code is RejectionCode.NOT_FOUND
    assert adapter.refused(UpdateAdapter(workspace="ws", name="my-lora", changes=AdapterChanges())).code is (
        RejectionCode.NOT_FOUND
    )
    adapter.handle(RegisterAdapter(spec=nemo_spec(), new_version_if_exists=False))
    assert adapter.state.changes == AdapterChanges()


def test_adapters_refuse_other_aggregates_commands() -> None:
    adapter = Folded(adapters.ADAPTERS, "ws/my-lora")
    assert adapter.refused(CreateWorkspace(name="ws")).code is RejectionCode.INVALID


# --- seed 004's file directories ---------------------------------------------------------------------


def upload(filename: str, sha: str = SHA_A, *, safe: bool = True) -> UploadLoraFile:
    return UploadLoraFile(
        entity_type=EntityType.STYLES,
        filename=filename,
        use_safe_filename=safe,
        staged_key=f"staging/{filename}-{sha[:4]}",
        size=10,
        sha256=sha,
    )


def stored(partial_path: str, sha: str = SHA_A) -> CompleteLoraFile:
    file = StoredFile(path=partial_path.split("/")[-1], key=blob_key(sha), sha256=sha, size=10)
    return CompleteLoraFile(
        partial_path=partial_path, file=file, analysis=Analysis(container="safetensors", format="x")
    )


def test_one_name_is_never_handed_out_twice() -> None:
    styles = Folded(lora_files.LORA_DIRS, "styles")
    [first] = styles.handle(upload("a.safetensors"))
    assert isinstance(first, LoraFileReserved)
    assert (first.partial_path, first.filename, first.original_filename) == (
        "styles/a.safetensors",
        "a.safetensors",
        "a.safetensors",
    )
    # Reserved (not yet stored) names are taken too, case-insensitively.
    [second] = styles.handle(upload("A.safetensors", SHA_B))
    assert isinstance(second, LoraFileReserved) and second.filename == "A_v2.safetensors"
    [third] = styles.handle(upload("a_v2.safetensors"))
    assert isinstance(third, LoraFileReserved) and third.filename == "a_v3.safetensors"
    conflict = styles.refused(upload("a.safetensors", safe=False))
    assert conflict.code is RejectionCode.CONFLICT and conflict.field == "file"
    assert set(styles.state.files) == {"styles/a.safetensors", "styles/A_v2.safetensors", "styles/a_v3.safetensors"}


def test_a_refused_file_frees_its_name_and_reports_land_once() -> None:
    styles = Folded(lora_files.LORA_DIRS, "styles")
    styles.handle(upload("a.safetensors"))
    assert styles.handle(FailLoraFile(partial_path="styles/a.safetensors", reason="not a LoRA")) == [
        LoraFileRejected(partial_path="styles/a.safetensors", reason="not a LoRA")
    ]
    assert not styles.state.files
    assert styles.decide(stored("styles/a.safetensors")) == []  # too late: the name is gone
    [again] = styles.handle(upload("a.safetensors", SHA_B))
    assert isinstance(again, LoraFileReserved) and again.filename == "a.safetensors"
    [done] = styles.handle(stored("styles/a.safetensors", SHA_B))
    assert isinstance(done, LoraFileStored) and styles.state.files["styles/a.safetensors"].stored
    assert styles.decide(stored("styles/a.safetensors", SHA_B)) == []
    assert styles.decide(FailLoraFile(partial_path="styles/a.safetensors", reason="late")) == []


def test_delete_bins_with_unique_names_and_restore_brings_the_newest_back() -> None:
    styles = Folded(lora_files.LORA_DIRS, "styles")
    assert styles.refused(DeleteLoraFile(partial_path="styles/a.safetensors")).code is RejectionCode.NOT_FOUND
    styles.handle(upload("a.safetensors"))
    busy = styles.refused(DeleteLoraFile(partial_path="styles/a.safetensors"))
    assert busy.code is RejectionCode.CONFLICT  # still being validated
    styles.handle(stored("styles/a.safetensors"))
    assert styles.handle(DeleteLoraFile(partial_path="styles/a.safetensors")) == [
        LoraFileBinned(partial_path="styles/a.safetensors", bin_path="styles/a.safetensors")
    ]
    assert not styles.state.files
    styles.handle(upload("a.safetensors", SHA_B))
    styles.handle(stored("styles/a.safetensors", SHA_B))
    conflict = styles.refused(RestoreLoraFile(partial_path="styles/a.safetensors"))
    assert conflict.code is RejectionCode.CONFLICT  # the path is taken again
    assert styles.handle(DeleteLoraFile(partial_path="styles/a.safetensors")) == [
        LoraFileBinned(partial_path="styles/a.safetensors", bin_path="styles/a_v2.safetensors")
    ]
    assert styles.handle(RestoreLoraFile(partial_path="styles/a.safetensors")) == [
        LoraFileRestored(partial_path="styles/a.safetensors", bin_path="styles/a_v2.safetensors")
    ]
    assert styles.state.files["styles/a.safetensors"].sha256 == SHA_B
    assert list(styles.state.binned) == ["styles/a.safetensors"]
    assert styles.refused(RestoreLoraFile(partial_path="styles/b.safetensors")).code is RejectionCode.NOT_FOUND


# --- NeMo filesets -----------------------------------------------------------------------------------


def add(path: str, sha: str = SHA_A, fileset: str = "files") -> AddFilesetFile:
    return AddFilesetFile(
        workspace="ws", fileset=fileset, path=path, staged_key=f"staging/{sha[:8]}", size=10, sha256=sha
    )


def store(path: str, sha: str = SHA_A) -> StoreFilesetFile:
    return StoreFilesetFile(file=StoredFile(path=path, key=blob_key(sha), sha256=sha, size=10))


def test_fileset_files_are_added_then_stored_once() -> None:
    fileset = Folded(filesets.FILESETS, "ws/files")
    assert fileset.decide(store("adapter_config.json")) == []  # nothing was added
    assert fileset.handle(add("adapter_config.json")) == [FilesetFileAdded(**add("adapter_config.json").model_dump())]
    fileset.handle(add("adapter_model.safetensors", SHA_B))
    assert not fileset.state.complete
    assert fileset.handle(store("adapter_config.json")) == [FilesetFileStored(file=store("adapter_config.json").file)]
    assert fileset.decide(store("adapter_config.json")) == []  # a repeated report
    assert not fileset.state.complete
    fileset.handle(store("adapter_model.safetensors", SHA_B))
    assert fileset.state.complete and fileset.state.files["adapter_model.safetensors"].stored is not None


def test_a_replaced_file_ignores_the_old_uploads_report() -> None:
    fileset = Folded(filesets.FILESETS, "ws/files")
    fileset.handle(add("adapter_model.safetensors", SHA_A))
    fileset.handle(add("adapter_model.safetensors", SHA_B))  # uploaded again before the first was stored
    assert fileset.decide(store("adapter_model.safetensors", SHA_A)) == []
    [stored_b] = fileset.handle(store("adapter_model.safetensors", SHA_B))
    assert isinstance(stored_b, FilesetFileStored) and fileset.state.complete
    assert fileset.state.files["adapter_model.safetensors"].sha256 == SHA_B


@pytest.mark.parametrize("name", ["a b", "a/b", "", "x" * 256])
def test_fileset_names_follow_the_entity_name_rule(name: str) -> None:
    rejected = Folded(filesets.FILESETS, f"ws/{name}").refused(add("adapter_config.json", fileset=name))
    assert rejected.code is RejectionCode.INVALID and rejected.field == "fileset"


def test_an_empty_fileset_is_not_complete_and_other_commands_are_refused() -> None:
    fileset = Folded(filesets.FILESETS, "ws/files")
    assert fileset.refused(CreateWorkspace(name="ws")).code is RejectionCode.INVALID
    assert filesets.Fileset("ws", "files").complete is False


def test_every_decision_is_a_registered_wire_type() -> None:
    """Envelopes round-trip: what decide returns can be put on a topic and read back."""
    adapter = Folded(adapters.ADAPTERS, "ws/my-lora")
    [requested] = adapter.decide(RegisterAdapter(spec=nemo_spec(), new_version_if_exists=False))
    envelope = envelope_for(requested, aggregate_id="ws/my-lora", actor=SYSTEM_ACTOR, aggregate_version=1)
    again = decode(encode(envelope))
    assert again.type == "adapter.requested" and again.payload == requested
