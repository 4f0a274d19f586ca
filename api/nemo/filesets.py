"""NeMo filesets: upload a file into `{workspace}/{fileset}` (multipart, streamed to S3) and list its files.

The API stages the bytes; the artifacts agent stores them content-addressed and reports them stored.
Files are not validated one by one: an adapter created from the fileset is validated as a whole.
"""

from __future__ import annotations

import re
from typing import Any

from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath

from api.auth import Principal
from api.commands import CommandBus, MaybeRecorded
from api.contract import answers
from api.errors import NotFound, Unprocessable
from api.nemo.adapters import require_workspace
from api.nemo.paths import paths
from api.nemo.schemas import Fileset, FilesetFile
from api.params import Wait
from api.readmodel import nemo_queries
from api.teams import FILESET, WORKSPACE, owns
from api.uploads import UPLOAD_ROUTE_OPTIONS, stage_upload
from streams.filesets import AddFilesetFile, fileset_id
from streams.names import name_problem

TAGS = ["nemo filesets"]


def fileset_path(filename: str) -> str:
    """The name a file is kept under in its fileset: the client's file name without directory parts."""
    return re.split(r"[/\\]", filename)[-1].strip()


def fileset_path_problem(filename: str) -> str | None:
    path = fileset_path(filename)
    if problem := name_problem(path):
        return f"file {problem}"
    if path.startswith("."):
        return "file name must not start with a dot"
    return None


@post(
    paths("/filesets/{fileset:str}/files"),
    status_code=201,
    tags=TAGS,
    summary="Upload a file into a fileset",
    opt={
        **owns(WORKSPACE, FILESET),
        **answers(s202="The file as it stands, staged, when `?wait=` ran out before it was stored"),
    },
    **UPLOAD_ROUTE_OPTIONS,
)
async def upload_fileset_file(
    workspace: FromPath[str],
    fileset: FromPath[str],
    request: Request[Principal, str, State],
    bus: NamedDependency[CommandBus],
    state: State,
    wait: Wait = 0,
) -> Response[Any]:
    budget = bus.budget(wait)
    await require_workspace(state, workspace)
    if problem := name_problem(fileset):
        raise Unprocessable(f"fileset {problem}", loc=["path", "fileset"])
    settings = state.settings
    upload = await stage_upload(
        request,
        s3=state.s3,
        bucket=settings.s3_bucket,
        max_bytes=settings.max_adapter_bytes,
        check_filename=fileset_path_problem,
    )
    if upload.file is None:
        raise Unprocessable("send the file as a multipart part named 'file'", loc=["body", "file"])
    staged = upload.file
    path = fileset_path(staged.filename)
    try:
        command_id = await bus.send(
            AddFilesetFile(
                workspace=workspace,
                fileset=fileset,
                path=path,
                staged_key=staged.key,
                size=staged.size,
                sha256=staged.sha256,
            ),
            aggregate_id=fileset_id(workspace, fileset),
            actor=request.user.actor,
            wait=budget.left,
        )
    except MaybeRecorded:
        raise  # the command may still land and its job needs the bytes; else the staging sweep takes them
    except BaseException:
        await upload.discard_within(state.s3)
        raise
    if (answer := await bus.outcome(command_id, ["path"])) is not None:
        return answer

    async def stored() -> dict[str, Any] | None:
        row = await nemo_queries.get_fileset_file(state.engine, workspace, fileset, path)
        # Another upload of the same path may have replaced it meanwhile: that answers too.
        return row if row is not None and (row["status"] == "stored" or row["correlation_id"] != command_id) else None

    row = await bus.wait_until(stored, budget.left)
    if row is None:
        row = await nemo_queries.get_fileset_file(state.engine, workspace, fileset, path)
    assert row is not None  # its `fileset.file_added` is projected: the outcome says so
    location = f"/v2/workspaces/{workspace}/filesets/{fileset}"
    status = 201 if row["status"] == "stored" else 202
    body = FilesetFile.from_row(row).model_dump(mode="json")
    return Response(body, status_code=status, headers={"Location": location})


@get(paths("/filesets/{fileset:str}"), tags=TAGS, summary="List a fileset's files", opt=owns(WORKSPACE, FILESET))
async def get_fileset(workspace: FromPath[str], fileset: FromPath[str], state: State) -> Fileset:
    await require_workspace(state, workspace)
    rows = await nemo_queries.list_fileset_files(state.engine, workspace, fileset)
    if not rows:
        raise NotFound(f"fileset {fileset!r} does not exist in workspace {workspace!r}", loc=["path", "fileset"])
    return Fileset(workspace=workspace, name=fileset, files=[FilesetFile.from_row(r) for r in rows])


FILESET_ROUTES: list[Any] = [upload_fileset_file, get_fileset]
