"""The daemon's HTTP transport probed as a hostile local client would: connection floods, trickling,
framing tricks, unauthenticated bodies, and connections caught by SIGTERM. Real daemon, loopback only."""

from __future__ import annotations

import http.client
import json
import resource
import signal
import socket
import threading
import time

import numpy as np
import pytest

from tests.edge._fixtures import edge_fixture, start_daemon
from tests.edge.serve.http._transport import read_answers

H, W, C = 28, 28, 1
INFER = "/v2/models/edgekit/infer"


@pytest.fixture(scope="module")
def fx():
    return edge_fixture()


@pytest.fixture(scope="module")
def srv(fx):
    d = start_daemon("--header-timeout", "1", "--body-timeout", "1", "--token", "tok")
    yield d
    d.stop()


def valid_body() -> bytes:
    doc = {"inputs": [{"name": "input", "shape": [1, H, W, C], "datatype": "UINT8",
                       "data": np.zeros(H * W * C, np.uint8).tolist()}],
           "parameters": {"deadline_ms": 10_000}}
    return json.dumps(doc).encode()


def raw(d, data: bytes, timeout: float = 5.0, read_all: bool = True) -> bytes:
    """Send ``data`` on a fresh socket and return everything the daemon answers until it closes (or timeout)."""
    s = socket.create_connection((d.host, d.port), timeout=timeout)
    try:
        s.sendall(data)
        out = b""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            out += chunk
            if not read_all and b"\r\n\r\n" in out:
                break
        return out
    finally:
        s.close()


def status_of(resp: bytes) -> int:
    assert resp.startswith(b"HTTP/1.1 "), resp[:80]
    return int(resp[9:12])


def healthy(d, token: str | None = "tok") -> bool:
    c = http.client.HTTPConnection(d.host, d.port, timeout=5)
    try:
        c.request("GET", "/v2/health/ready")
        ok = c.getresponse().status == 200
        c.close()
        c = http.client.HTTPConnection(d.host, d.port, timeout=5)
        hdr = {"Authorization": f"Bearer {token}"} if token else {}
        c.request("POST", INFER, body=valid_body(), headers=hdr)
        r = c.getresponse()
        r.read()
        return ok and r.status == 200
    finally:
        c.close()


# ----------------------------------------------------------------------------- framing


@pytest.mark.parametrize("value", [b"1_0", b"+10", b" 10 ", b"0x0a", b"10, 10"])
def test_content_length_must_be_digits_only(srv, value):
    req = b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok\r\nContent-Length:" + value \
        + b"\r\n\r\n0123456789"
    resp = raw(srv, req)
    assert status_of(resp) == 400 and b"Connection: close" in resp


def test_conflicting_or_repeated_content_length_is_refused(srv):
    for second in (b"5", b"10"):
        req = b"POST /v2 HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nContent-Length: " + second + b"\r\n\r\n0123456789"
        assert status_of(raw(srv, req)) == 400


def test_http11_needs_a_host(srv):
    resp = raw(srv, b"GET /v2/health/live HTTP/1.1\r\n\r\n")
    assert status_of(resp) == 400 and b"Host" in resp
    assert status_of(raw(srv, b"GET /v2/health/live HTTP/1.0\r\n\r\n")) == 200


@pytest.mark.parametrize("line", [b"GARBAGE\r\n\r\n", b"GET\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"])
def test_a_malformed_request_line_gets_a_400_with_a_status_line(srv, line):
    resp = raw(srv, line)
    assert status_of(resp) == 400 and b"Content-Length:" in resp
    body = resp.split(b"\r\n\r\n", 1)[1]
    assert "error" in json.loads(body)


def test_bearer_scheme_is_case_insensitive(srv):
    for scheme in ("Bearer", "bearer", "BEARER"):
        c = http.client.HTTPConnection(srv.host, srv.port, timeout=5)
        c.request("GET", "/v2", headers={"Authorization": f"{scheme} tok"})
        assert c.getresponse().status == 200, scheme
        c.close()


# ----------------------------------------------------------------------------- bodies and deadlines


def test_the_token_is_checked_before_the_body_is_read(srv):
    """8 MiB announced, none sent: the 401 comes at once instead of after buffering the body."""
    s = socket.create_connection((srv.host, srv.port), timeout=5)
    try:
        s.sendall(b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 8000000\r\n\r\n")
        t = time.monotonic()
        resp = s.recv(65536)
        assert status_of(resp) == 401 and time.monotonic() - t < 2.0
    finally:
        s.close()


def test_a_trickled_request_gets_408_at_its_header_deadline(srv):
    """One byte every 0.1 s never completes the headers: the daemon answers 408 after --header-timeout
    (1 s here) although bytes keep arriving."""
    s = socket.create_connection((srv.host, srv.port), timeout=5)
    start = time.monotonic()
    got = b""
    try:
        for b in b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200:
            try:
                s.sendall(bytes([b]))
            except OSError:
                break
            s.settimeout(0.1)
            try:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
            except socket.timeout:
                pass
            if time.monotonic() - start > 4:
                break
    finally:
        s.close()
    assert got and status_of(got) == 408, got[:100]
    assert time.monotonic() - start < 3.0


def test_a_slow_body_gets_408_at_its_body_deadline(srv):
    s = socket.create_connection((srv.host, srv.port), timeout=5)
    try:
        s.sendall(b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok\r\n"
                  b"Content-Length: 100\r\n\r\n{")
        t = time.monotonic()
        resp = s.recv(65536)
        assert status_of(resp) == 408 and 0.5 < time.monotonic() - t < 3.0
    finally:
        s.close()


# ----------------------------------------------------------------------------- floods


def test_thousands_of_idle_and_trickling_connections_cannot_lock_others_out(fx):
    """2,000 connections (idle, or holding half a request) against a daemon under a 1024 file-descriptor
    limit: health checks and real inferences from fresh connections keep being answered."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2300
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"this test opens {need} sockets; the hard descriptor limit here is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need), hard))
    socks: list[socket.socket] = []
    try:
        with start_daemon("--max-connections", "512", nofile=1024) as d:
            for i in range(2000):
                try:
                    s = socket.create_connection((d.host, d.port), timeout=5)
                except OSError:
                    continue  # refused or reset while the daemon sheds: that is its right
                if i % 2:
                    try:
                        s.sendall(b"POST /v2/models/edgekit/infer HTTP/1.1\r\nHost: x\r\n")  # never finished
                    except OSError:
                        pass
                socks.append(s)
                if i % 500 == 499:
                    assert healthy(d, token=None), f"not answered after {i + 1} connections"
            t = time.monotonic()
            for _ in range(5):
                assert healthy(d, token=None)
            assert time.monotonic() - t < 10
            c = http.client.HTTPConnection(d.host, d.port, timeout=5)
            c.request("GET", "/admin/status")
            st = json.loads(c.getresponse().read())
            c.close()
            assert st["transport"]["open_connections"] <= 512 + 1
            assert st["transport"]["max_connections"] <= 1024 - 64
    finally:
        for s in socks:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# ----------------------------------------------------------------------------- shutdown


def test_requests_in_flight_at_sigterm_get_an_answer(fx):
    """20 connections send a request each and SIGTERM lands right after, before the daemon has read
    them all: every one must read an HTTP answer (200, or 503 once draining), never a reset."""
    d = start_daemon("--inject-delay-ms", "20")
    try:
        socks = [socket.create_connection((d.host, d.port), timeout=10) for _ in range(20)]
        req = (b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n" % len(valid_body())) + valid_body()
        results: list = [None] * len(socks)
        sent = threading.Barrier(len(socks) + 1)

        def go(i: int, s: socket.socket) -> None:
            try:
                s.sendall(req)
                sent.wait(10)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                results[i] = status_of(data) if data else "closed without an answer"
            except OSError as exc:
                results[i] = f"{type(exc).__name__}"
        threads = [threading.Thread(target=go, args=(i, s)) for i, s in enumerate(socks)]
        for t in threads:
            t.start()
        sent.wait(10)
        d.signal(signal.SIGTERM)
        for t in threads:
            t.join(15)
        for s in socks:
            s.close()
        assert all(r in (200, 503) for r in results), results
        assert 200 in results  # the requests already queued were served, not dropped
        assert d.proc.wait(20) == 0
    finally:
        d.stop()


def test_sigterm_ends_the_process_within_the_drain_timeout(fx):
    """A queued request that would take 30 s cannot hold the process past --drain-timeout."""
    d = start_daemon("--inject-delay-ms", "30000", "--drain-timeout", "1")
    try:
        s = socket.create_connection((d.host, d.port), timeout=10)
        s.sendall((b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                   % len(valid_body())) + valid_body())
        time.sleep(0.3)
        t = time.monotonic()
        d.signal(signal.SIGTERM)
        d.proc.wait(10)
        assert time.monotonic() - t < 3.0
        s.close()
    finally:
        d.stop()


# ----------------------------------------------------------------------------- framing gaps (issue 20)


def test_a_valid_request_then_garbage_in_one_read_gets_its_200_then_a_400(srv):
    s = socket.create_connection((srv.host, srv.port), timeout=5)
    try:
        s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n\x16\x03\x01 not http at all")
        (st1, _, b1), (st2, h2, b2) = read_answers(s, 2)
        assert st1 == 200 and json.loads(b1) == {"live": True}
        assert st2 == 400 and h2["connection"] == "close" and "malformed request line" in json.loads(b2)["error"]
    finally:
        s.close()


def test_a_content_length_shorter_than_the_body_is_named_not_a_405(srv):
    body = b'{"inputs": []}'
    s = socket.create_connection((srv.host, srv.port), timeout=5)
    try:
        s.sendall(b"POST /v2/repository/index HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok\r\n"
                  b"Content-Length: 4\r\n\r\n" + body)
        answers = read_answers(s, 2)
        assert len(answers) == 2 and answers[0][0] == 200  # the first request, with its 4-byte body, is served
        st, _, b = answers[1]
        assert st == 400 and "Content-Length shorter than its body" in json.loads(b)["error"]
    finally:
        s.close()


def test_upgrade_h2c_is_ignored(srv):
    s = socket.create_connection((srv.host, srv.port), timeout=5)
    try:
        s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                  b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
        [(st, h, b)] = read_answers(s, 1)
        assert st == 200 and json.loads(b) == {"live": True} and "upgrade" not in h
    finally:
        s.close()


def test_expect_100_continue_is_answered_before_the_body(srv):
    body = valid_body()
    s = socket.create_connection((srv.host, srv.port), timeout=5)
    try:
        s.sendall(b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok\r\n"
                  b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
        assert s.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(body)
        [(st, _, b)] = read_answers(s, 1)
        assert st == 200, b
        # Refused by its headers (no token): the final status at once, never a 100.
        s2 = socket.create_connection((srv.host, srv.port), timeout=5)
        s2.sendall(b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                   b"Content-Length: %d\r\n\r\n" % len(body))
        assert s2.recv(65536).startswith(b"HTTP/1.1 401 ")
        s2.close()
    finally:
        s.close()


def test_two_hosts_and_a_double_space_are_refused(srv):
    resp = raw(srv, b"GET /v2/health/live HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    assert status_of(resp) == 400 and b"more than one Host" in resp
    resp = raw(srv, b"GET  /v2/health/live HTTP/1.1\r\nHost: a\r\n\r\n")
    assert status_of(resp) == 400 and b"single spaces" in resp


def test_a_crlf_a_second_does_not_keep_a_connection_open(srv):
    """Empty lines count toward the header deadline (1 s here); they used to count as activity."""
    s = socket.create_connection((srv.host, srv.port), timeout=5)
    got = b""
    start = time.monotonic()
    try:
        s.settimeout(0.3)
        while time.monotonic() - start < 10:
            try:
                s.sendall(b"\r\n")
                chunk = s.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                break
            if not chunk:
                break
            got += chunk
    finally:
        s.close()
    assert status_of(got) == 408


def test_sigterm_closes_at_once_the_connections_without_a_complete_request(fx):
    """An idle client and one holding half its headers do not hold the exit up to the header deadline
    (30 s here): the daemon closes them when the drain begins (the half-sent request gets a 503)."""
    d = start_daemon("--header-timeout", "30", "--drain-timeout", "20")
    try:
        idle = socket.create_connection((d.host, d.port), timeout=10)
        half = socket.create_connection((d.host, d.port), timeout=10)
        half.sendall(b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\n")
        assert healthy(d, token=None)
        t = time.monotonic()
        d.signal(signal.SIGTERM)
        assert d.proc.wait(15) == 0
        assert time.monotonic() - t < 10
        assert status_of(half.recv(65536)) == 503
        idle.close()
        half.close()
    finally:
        d.stop()
