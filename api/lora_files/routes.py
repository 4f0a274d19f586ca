"""Seed 004: upload, list, delete to the bin and restore LoRA files, through the `lora_dir` aggregate.

The seed's answers are synchronous, so these routes wait for the outcome by default (up to the
`api_max_wait_s` setting); `?wait=0`, or a wait that runs out, answers 202 with the command's status.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, delete, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromQuery, JSONBody

from api.auth import Principal, admin_only
from api.commands import CommandBus, MaybeRecorded
from api.errors import NotFound, Unprocessable
from api.lora_files.openapi import AdminUploadOperation, UserUploadOperation
from api.lora_files.schemas import (
    AdminLoraUploadResponse,
    LoraDeleteResponse,
    LoraFileItem,
    LoraFileList,
    LoraPathRequest,
    LoraUploadResponse,
)
from api.params import Page, PageSize, TeamFilter, Wait
from api.readmodel import lora_file_queries as files
from api.schemas import Pagination
from api.uploads import UPLOAD_ROUTE_OPTIONS, StagedFile, stage_upload
from streams.lora_files import DeleteLoraFile, RestoreLoraFile, UploadLoraFile
from streams.naming import (
    ADMIN_ENTITY_TYPES,
    DEFAULT_ENTITY_TYPE,
    MAX_UPLOAD_BYTES,
    USER_ENTITY_TYPES,
    EntityType,
    SafeNameProblem,
    safe_filename,
)

MAX_WAIT = 300.0  # the default wait: capped by the `api_max_wait_s` setting
_TRUE = frozenset({"true", "1", "yes", "on", "t", "y"})
_FALSE = frozenset({"false", "0", "no", "off", "f", "n"})


def _filename_problem(name: str) -> str | None:
    result = safe_filename(name)
    return str(result) if isinstance(result, SafeNameProblem) else None


def _entity_type(value: str | None, allowed: frozenset[EntityType]) -> EntityType:
    if value is None or not value.strip():
        return DEFAULT_ENTITY_TYPE
    try:
        entity = EntityType(value.strip())
    except ValueError:
        entity = None
    if entity is None or entity not in allowed:
        names = ", ".join(sorted(e.value for e in allowed))
        raise Unprocessable(f"entity_type {value!r} is not one of {names}", loc=["body", "entity_type"])
    return entity


def _flag(value: str | None, name: str, default: bool) -> bool:
    if value is None or not value.strip():
        return default
    lowered = value.strip().lower()
    if lowered in _TRUE | _FALSE:
        return lowered in _TRUE
    raise Unprocessable(f"{name} must be true or false, not {value!r}", loc=["body", name])


async def _upload(
    request: Request[Principal, str, State],
    bus: CommandBus,
    state: State,
    wait: float,
    allowed: frozenset[EntityType],
) -> dict[str, Any] | Response[Any]:
    budget = bus.budget(wait)
    staged = await stage_upload(
        request,
        s3=state.s3,
        bucket=state.settings.s3_bucket,
        max_bytes=MAX_UPLOAD_BYTES,
        check_filename=_filename_problem,
    )
    handed_over = False  # once a command names the staged object, its job removes it
    try:
        if staged.file is None:
            raise Unprocessable("a file is required", loc=["body", "file"])
        entity = _entity_type(staged.fields.get("entity_type"), allowed)
        use_safe_filename = _flag(staged.fields.get("use_safe_filename"), "use_safe_filename", True)
        file: StagedFile = staged.file
        filename = safe_filename(file.filename)
        assert isinstance(filename, str)  # checked before the bytes were stored
        try:
            command_id = await bus.send(
                UploadLoraFile(
                    entity_type=entity,
                    filename=filename,
                    use_safe_filename=use_safe_filename,
                    staged_key=file.key,
                    size=file.size,
                    sha256=file.sha256,
                ),
                aggregate_id=entity.value,
                actor=request.user.actor,
                wait=budget.left,
            )
        except MaybeRecorded:
            handed_over = True  # the command may still land and its job needs the bytes; else the sweep takes them
            raise
        handed_over = True
        try:
            pending = await bus.outcome(command_id, ["body"])
        except Exception:
            handed_over = False  # refused: no job will take the staged bytes
            raise
    finally:
        if not handed_over:
            await staged.discard_within(state.s3)
    if pending is not None:
        return pending

    async def settled() -> dict[str, Any] | None:
        row = await files.file_of_command(state.engine, command_id)
        return row if row is not None and row["status"] != "validating" else None

    row = await bus.wait_until(settled, budget.left)
    if row is None:
        return await bus.pending(command_id)
    if row["status"] != files.STORED:
        raise Unprocessable(f"the file was refused: {row['reason']}", loc=["body", "file"])
    return row


@post(
    "/api/v1/lora/upload",
    status_code=200,
    tags=["lora"],
    summary="Upload a LoRA model file",
    operation_class=UserUploadOperation,
    **UPLOAD_ROUTE_OPTIONS,
)
async def upload_lora(
    request: Request[Principal, str, State], bus: NamedDependency[CommandBus], state: State, wait: Wait = MAX_WAIT
) -> LoraUploadResponse | Response[Any]:
    answer = await _upload(request, bus, state, wait, USER_ENTITY_TYPES)
    return answer if isinstance(answer, Response) else LoraUploadResponse.from_row(answer)


@post(
    "/api/v1/admin/lora/upload",
    status_code=200,
    tags=["admin"],
    summary="Upload a LoRA model file (Admin)",
    operation_class=AdminUploadOperation,
    guards=[admin_only],
    **UPLOAD_ROUTE_OPTIONS,
)
async def admin_upload_lora(
    request: Request[Principal, str, State], bus: NamedDependency[CommandBus], state: State, wait: Wait = MAX_WAIT
) -> AdminLoraUploadResponse | Response[Any]:
    answer = await _upload(request, bus, state, wait, ADMIN_ENTITY_TYPES)
    return answer if isinstance(answer, Response) else AdminLoraUploadResponse.from_row(answer)


def _checked_path(partial_path: str) -> tuple[str, EntityType]:
    folder, slash, name = partial_path.partition("/")
    try:
        entity = EntityType(folder)
    except ValueError:
        entity = None
    if not slash or entity is None or safe_filename(name) != name:
        raise Unprocessable(
            "partial_path must be {entity_type}/{file name}, as the upload answered", loc=["body", "partial_path"]
        )
    return partial_path, entity


@get("/api/v1/admin/lora", tags=["admin"], summary="List LoRA model files", guards=[admin_only])
async def list_lora(
    state: State,
    entity_type: FromQuery[EntityType | None] = None,
    page: Page = 1,
    page_size: PageSize = 100,
    team: TeamFilter = None,
) -> LoraFileList:
    rows, total = await files.list_stored(
        state.engine,
        entity_type=entity_type.value if entity_type else None,
        offset=(page - 1) * page_size,
        limit=page_size,
        team=team,
    )
    return LoraFileList(
        data=[LoraFileItem.from_row(r) for r in rows],
        pagination=Pagination.of(page, page_size, len(rows), total),
    )


@delete(
    "/api/v1/admin/lora",
    status_code=200,
    tags=["admin"],
    summary="Delete a LoRA model file (Admin)",
    guards=[admin_only],
)
async def delete_lora(
    data: JSONBody[LoraPathRequest],
    request: Request[Principal, str, State],
    bus: NamedDependency[CommandBus],
    state: State,
    wait: Wait = MAX_WAIT,
) -> LoraDeleteResponse | Response[Any]:
    partial_path, entity = _checked_path(data.partial_path)
    command_id = await bus.send(
        DeleteLoraFile(partial_path=partial_path), aggregate_id=entity.value, actor=request.user.actor, wait=wait
    )
    if (pending := await bus.outcome(command_id, ["body"])) is not None:
        return pending
    row = await files.binned_by_command(state.engine, command_id)
    if row is None:
        raise NotFound(f"{partial_path} was deleted, then restored or deleted again", loc=["body", "partial_path"])
    return LoraDeleteResponse.from_bin_row(row)


@post(
    "/api/v1/admin/lora/restore",
    status_code=200,
    tags=["admin"],
    summary="Restore the newest binned copy of a LoRA model file (Admin)",
    guards=[admin_only],
)
async def restore_lora(
    data: JSONBody[LoraPathRequest],
    request: Request[Principal, str, State],
    bus: NamedDependency[CommandBus],
    state: State,
    wait: Wait = MAX_WAIT,
) -> AdminLoraUploadResponse | Response[Any]:
    partial_path, entity = _checked_path(data.partial_path)
    command_id = await bus.send(
        RestoreLoraFile(partial_path=partial_path), aggregate_id=entity.value, actor=request.user.actor, wait=wait
    )
    if (pending := await bus.outcome(command_id, ["body"])) is not None:
        return pending
    row = await files.get_file(state.engine, partial_path)
    if row is None or row["status"] != files.STORED:
        raise NotFound(f"{partial_path} was restored, then deleted again", loc=["body", "partial_path"])
    return AdminLoraUploadResponse.from_row(row)


ROUTES: list[Any] = [upload_lora, admin_upload_lora, list_lora, delete_lora, restore_lora]
