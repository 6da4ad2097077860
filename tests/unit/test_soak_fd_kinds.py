"""The soak's fd breakdown: which of a process's fds are client connections, pooled
connections to an upstream, listening sockets, or something else."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from expertgate.bench.soak import proc_fd_kinds


@pytest.fixture()
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for s in opened:
        s.close()


def _listen(opened: list[socket.socket]) -> tuple[socket.socket, int]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    opened.append(srv)
    return srv, srv.getsockname()[1]


def _connect(opened: list[socket.socket], srv: socket.socket, port: int) -> None:
    c = socket.create_connection(("127.0.0.1", port))
    a, _ = srv.accept()
    opened += [c, a]


def test_fds_are_sorted_into_clients_pools_and_other(sockets: list[socket.socket],
                                                     tmp_path) -> None:
    own, own_port = _listen(sockets)
    pool, pool_port = _listen(sockets)
    pid = os.getpid()
    base = proc_fd_kinds(pid, own_port=own_port, pools={"upstream": pool_port})
    # this process is both ends: a connection to own_port adds one client fd (the accepted
    # end, local port own_port) and one whose remote port is own_port (not a known pool)
    _connect(sockets, own, own_port)
    _connect(sockets, own, own_port)
    _connect(sockets, pool, pool_port)
    with open(tmp_path / "f", "w"):
        now = proc_fd_kinds(pid, own_port=own_port, pools={"upstream": pool_port})
    assert now["listen"] == base["listen"] == 1
    assert now["clients"] - base["clients"] == 2
    assert now["upstream"] - base["upstream"] == 1
    # 2 connecting ends to own_port, 1 accepted end of the pool server, 1 file
    assert now["other"] - base["other"] == 4
