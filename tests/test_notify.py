"""sd_notify through a real unix datagram socket standing in for systemd's NOTIFY_SOCKET."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.notify import Notifier


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def _drain(sock: socket.socket) -> list[str]:
    sock.settimeout(0.2)
    out = []
    try:
        while True:
            out.append(sock.recv(4096).decode())
    except TimeoutError:
        return out


def test_ready_and_status_reach_the_socket(notify_socket: socket.socket) -> None:
    n = Notifier()
    n.ready("model v1")
    n.status("12.0 fps")
    n.stopping()
    assert _drain(notify_socket) == ["READY=1\nSTATUS=model v1", "STATUS=12.0 fps", "STOPPING=1"]


def test_watchdog_pings_at_half_the_interval(
    notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")  # 2 s → ping every 1 s
    n = Notifier()
    assert n.watchdog_interval == 1.0
    for t in (100.0, 100.4, 100.9, 101.0, 101.5, 102.2):
        n.alive(now=t)
    assert _drain(notify_socket) == ["WATCHDOG=1"] * 3  # at 100.0, 101.0, 102.2


def test_watchdog_for_another_pid_is_ignored(
    notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.setenv("WATCHDOG_PID", "1")
    n = Notifier()
    n.alive(now=5.0)
    assert n.watchdog_interval is None
    assert _drain(notify_socket) == []


def test_a_notify_socket_nobody_reads_never_blocks(notify_socket: socket.socket) -> None:
    n = Notifier()
    for i in range(20_000):  # far more than a unix datagram receive queue holds
        n.status(f"{i:05d} " + "x" * 200)
    assert n.dropped > 0  # returned at once each time: the overflow was dropped, not waited for
    assert _drain(notify_socket)[0].startswith("STATUS=00000")


def test_without_systemd_everything_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    n = Notifier()
    n.ready()
    n.alive()
    assert not n.enabled and n._sock is None
