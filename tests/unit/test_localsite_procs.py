"""A local-site server that never becomes healthy is stopped before the error is raised: its pid is recorded
nowhere, so nothing else could ever stop it (before, a slow Rucio start left it and PostgreSQL running)."""

from __future__ import annotations

import socket
import sys

import pytest

from facility_data.localsite.procs import SiteError, alive, free_port, port_in_use, start_healthy


def test_a_server_that_never_becomes_healthy_is_stopped(tmp_path):
    marker = "never_healthy_marker"
    with pytest.raises(SiteError, match="never healthy did not become healthy within 1 s"):
        start_healthy([sys.executable, "-c", f"import time; time.sleep(120)  # {marker}"], marker=marker,
                      check=lambda: False, what="never healthy", timeout=1, log=tmp_path / "log")
    assert not list(_children_with(marker)), "the unhealthy server was left running"


def test_a_healthy_server_keeps_running(tmp_path):
    from facility_data.localsite.procs import stop, wait_until

    marker = "healthy_marker"
    pid = start_healthy([sys.executable, "-c", f"import time; time.sleep(120)  # {marker}"], marker=marker,
                        check=lambda: True, what="healthy", timeout=5, log=tmp_path / "log")
    try:
        # /proc shows the new command line a moment after Popen returns
        wait_until(lambda: alive(pid, marker), what="the server", timeout=10)
    finally:
        assert stop(pid, marker)


def _children_with(marker: str):
    from pathlib import Path

    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if marker in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    yield proc.name
            except OSError:
                continue


def test_a_socket_connected_to_itself_is_not_a_listener():
    # Nobody listens on the port; binding our client to it forces the self-connect the kernel can pick by chance.
    port = free_port()
    assert not port_in_use(port, _source_port=port)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert port_in_use(server.getsockname()[1])
