"""Query parameters several routes share."""

from __future__ import annotations

from typing import Annotated

from litestar.params import Parameter

Wait = Annotated[
    float,
    Parameter(
        ge=0,
        le=300,
        description="Seconds to wait for the command's outcome; 0 answers at once with 202 and the command's status",
    ),
]
# Bounded so the row offset it makes ((page - 1) * page_size) stays a number every database takes; a page
# past the last answers an empty list.
MAX_PAGE = 1_000_000
Page = Annotated[int, Parameter(ge=1, le=MAX_PAGE, description="Page number, from 1")]
PageSize = Annotated[int, Parameter(ge=1, le=1000, description="Results per page")]
Force = Annotated[
    bool,
    Parameter(description="Delete an adapter that deployments serve: stop serving it everywhere first (else 409)"),
]
TeamFilter = Annotated[
    str | None,
    Parameter(description="Admin keys: only this team's (a user key always sees only its own team's)"),
]
