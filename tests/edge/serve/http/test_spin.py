"""Busy polling (edge/serve/http/spin.py): the epoll set of the sockets being read, polled after an answer while
the application is idle, ended by a readable socket; the listener keeps the set in step with its connections."""

from __future__ import annotations

import socket
import time

import pytest

from edge.core.errors import UsageError
from edge.serve.http.connection import TransportLimits
from edge.serve.http.spin import MAX_SPIN_US, SpinPoll
from tests.edge.serve.http._transport import Transport, read_answers


def test_a_spin_ends_when_a_watched_socket_is_readable_or_its_window_has_passed():
    a, b = socket.socketpair()
    sp = SpinPoll(2000)
    try:
        assert not sp.spin() and sp.spins == 0  # nothing watched: nothing to wait for
        sp.watch(a.fileno())
        sp.watch(a.fileno())  # twice is once
        t = time.perf_counter()
        assert not sp.spin()  # nothing readable: the whole window
        assert time.perf_counter() - t >= 0.002
        b.send(b"x")
        assert sp.spin() and (sp.spins, sp.woken) == (2, 1)  # readable: at once
        sp.unwatch(a.fileno())
        sp.unwatch(a.fileno())
        assert not sp.spin() and sp.spins == 2
    finally:
        sp.close()
        a.close()
        b.close()


@pytest.mark.parametrize("us", [0, -5, MAX_SPIN_US + 1])
def test_a_window_out_of_range_is_refused(us):
    with pytest.raises(ValueError, match="spin window must be in"):
        SpinPoll(us)
    if us:
        with pytest.raises(UsageError, match=f"spin_us must be 0 \\(off\\) to {MAX_SPIN_US} microseconds, got {us}"):
            TransportLimits(spin_us=us)


def _get(path: str) -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n"


def test_the_listener_spins_after_an_answer_and_watches_exactly_the_sockets_it_reads():
    t = Transport(TransportLimits(spin_us=500))
    try:
        sp = t.listener.spin
        assert sp is not None
        awake: list[float] = []
        t.listener._awake = awake.append  # the daemon's data plane: the runtime hears the core was kept awake
        listen_fd = t.call(lambda: t.listener.listener.fileno())
        assert t.call(lambda: set(sp._fds)) == {listen_fd}
        s = t.connect()
        fd = t.wait_for(lambda: next((c.fd for c in t.listener.conns), None))
        assert t.call(lambda: set(sp._fds)) == {listen_fd, fd}
        for i in range(3):  # keep-alive: answers are followed by spins (one per loop pass), each request served
            s.sendall(_get(f"/a{i}"))
            (status, _, body), = read_answers(s, 1)
            assert status == 200 and f"/a{i}".encode() in body
        assert t.wait_for(lambda: sp.spins >= 1)
        assert t.call(lambda: len(awake)) == t.call(lambda: sp.spins) and awake == sorted(awake)
        s.close()
        assert t.wait_for(lambda: set(sp._fds) == {listen_fd})  # a closed connection leaves the set
    finally:
        t.close()
    assert sp._fds == set()


def test_no_spin_while_the_application_has_work_or_when_it_is_off():
    t = Transport(TransportLimits(spin_us=500))
    busy = [True]
    t.listener._app_idle = lambda: not busy[0]  # as the daemon's data plane says while requests wait or run
    off = Transport()
    try:
        for tr in (t, off):
            s = tr.connect()
            s.sendall(_get("/x"))
            assert read_answers(s, 1)[0][0] == 200
            s.close()
        time.sleep(0.05)
        assert t.call(lambda: t.listener.spin.spins) == 0
        assert off.listener.spin is None
        busy[0] = False
        s = t.connect()
        s.sendall(_get("/y"))
        assert read_answers(s, 1)[0][0] == 200
        assert t.wait_for(lambda: t.listener.spin.spins >= 1)
        s.close()
    finally:
        t.close()
        off.close()
