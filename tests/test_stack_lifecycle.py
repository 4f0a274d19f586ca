"""`loraplane up` stops every child on Ctrl-C or SIGTERM and leaves nothing running."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import psutil
import pytest

from tests.services import external_services
from tests.support import start_stack, stop_stack


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_up_leaves_no_process_behind(tmp_path: Path, sig: int) -> None:
    with external_services() as external:
        stack = start_stack(tmp_path / "data", extra_env=external or {})
        tree = stack.tree()
        names = set(stack.pids())
        assert {"api", "worker"} <= names
        ports = [c.laddr.port for p in tree for c in p.net_connections(kind="tcp") if c.status == "LISTEN"]
        assert all(
            c.laddr.ip == "127.0.0.1" for p in tree for c in p.net_connections(kind="tcp") if c.status == "LISTEN"
        ), "something listens beyond loopback"

        left = stop_stack(stack, sig)
        assert stack.process.returncode is not None
        assert left == [], f"left running: {left}"
        assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in tree)
        assert not any(listening(port) for port in ports)
        assert not (tmp_path / "data" / "run" / "processes.json").exists()
