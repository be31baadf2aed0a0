"""A local-site server that never becomes healthy is stopped before the error is raised: its pid is recorded
nowhere, so nothing else could ever stop it (before, a slow Rucio start left it and PostgreSQL running)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from facility_data.localsite.procs import SiteError, alive, exited, free_port, port_in_use, start_healthy


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


def test_a_server_whose_main_thread_exited_has_not_exited_while_a_thread_holds_its_port():
    # The main thread of a threaded server can be a zombie while a serving thread still holds the listening socket:
    # only when every thread has exited is the port free (CI saw a "stopped" SciCat stand-in still accepting).
    code = (
        "import ctypes, socket, threading, time\n"
        "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
        "print(s.getsockname()[1], flush=True)\n"
        "threading.Thread(target=lambda: time.sleep(30)).start()\n"
        "ctypes.CDLL(None).pthread_exit(None)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        deadline = time.monotonic() + 10
        while "Z" not in open(f"/proc/{proc.pid}/stat").read().rsplit(")", 1)[1].split()[0]:
            assert time.monotonic() < deadline, "the main thread never exited"
            time.sleep(0.05)
        assert port_in_use(port) and not exited(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    assert exited(proc.pid) and not port_in_use(port)
