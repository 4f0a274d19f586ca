"""Serving an app with uvicorn (httptools and uvloop where installed), as every loraplane HTTP process does."""

from __future__ import annotations

import signal

from litestar import Litestar


def serve(app: Litestar, host: str, port: int, log_level: str) -> None:
    import uvicorn

    # uvicorn stops gracefully on SIGTERM, then raises the signal again once its own handler is gone: with this one in
    # place the process ends with 0 rather than -SIGTERM, as the other loraplane processes do.
    signal.signal(signal.SIGTERM, lambda *_: None)
    uvicorn.run(app, host=host, port=port, log_level=log_level.lower(), access_log=False)
