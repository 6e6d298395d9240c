"""HttpConnection (edge/serve/http/connection.py) in process, behind a real Listener on loopback: framing,
pipelining, 100-continue, Upgrade, the header clock, the global byte budget and what a closed connection frees."""

from __future__ import annotations

import gc
import json
import socket
import time

import pytest

from edge.core.errors import UsageError
from edge.serve.http.connection import HttpConnection, TransportLimits
from tests.edge.serve.http._transport import Transport, closed_by_peer, read_answers

MiB = 1 << 20


@pytest.fixture
def tr():
    t = Transport(TransportLimits(header_timeout_s=1.0, body_timeout_s=2.0))
    yield t
    t.close()


def get(path: str, extra: bytes = b"") -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n" + extra + b"\r\n"


def post_head(path: str, length: int, extra: bytes = b"") -> bytes:
    return b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n" % length + extra + b"\r\n"


def read_until(s: socket.socket, end: bytes, timeout: float = 5.0) -> bytes:
    """What ``s`` receives until it ends with ``end``, it closes, or ``timeout`` passes."""
    s.settimeout(timeout)
    data = b""
    while not data.endswith(end):
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            break
        if not chunk:
            break
        data += chunk
    return data


def error_of(body: bytes) -> str:
    return json.loads(body)["error"]


# ----------------------------------------------------------------------------- pipelining and framing


def test_a_valid_request_followed_by_garbage_gets_its_answer_then_a_400(tr):
    s = tr.connect()
    s.sendall(get("/a") + get("/b") + b"\x16\x03\x01\x02\x00garbage")
    (s1, _, b1), (s2, _, b2), (s3, h3, b3) = read_answers(s, 3)
    assert (s1, json.loads(b1)["target"]) == (200, "/a") and (s2, json.loads(b2)["target"]) == (200, "/b")
    assert s3 == 400 and h3["connection"] == "close"
    assert "malformed request line" in error_of(b3) and "\\x16\\x03" in error_of(b3)
    assert closed_by_peer(s)


def test_a_content_length_shorter_than_the_body_is_named(tr):
    s = tr.connect()
    s.sendall(post_head("/p", 5) + b"0123456789")
    (st1, _, b1), (st2, _, b2) = read_answers(s, 2)
    assert st1 == 200 and json.loads(b1)["body"] == 5 and json.loads(b1)["start"] == "01234"
    assert st2 == 400 and "Content-Length shorter than its body" in error_of(b2) and "56789" in error_of(b2)


def test_an_unknown_method_after_a_valid_request_names_the_method(tr):
    s = tr.connect()
    s.sendall(get("/a") + b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n")
    (st1, _, _), (st2, h2, b2) = read_answers(s, 2)
    assert st1 == 200 and st2 == 405 and "BREW" in error_of(b2) and "GET" in h2["allow"]


@pytest.mark.parametrize("line, status, words", [
    (b"GET  /a HTTP/1.1", 400, "single spaces"),
    (b"GET /a  HTTP/1.1", 400, "single spaces"),
    (b" GET /a HTTP/1.1", 400, "single spaces"),
    (b"GET /a HTTP/1.1 ", 400, "Expected CRLF after version"),  # httptools' own words
    (b"GET /a", 505, "only HTTP/1.1 and HTTP/1.0"),  # no version: HTTP/0.9
])
def test_a_malformed_request_line_is_refused_naming_it(tr, line, status, words):
    s = tr.connect()
    s.sendall(line + b"\r\nHost: x\r\n\r\n")
    [(st, _, body)] = read_answers(s, 1)
    assert st == status and words in error_of(body), error_of(body)
    assert tr.app.seen == []


def test_two_host_headers_are_refused(tr):
    for second in (b"y", b"x"):
        s = tr.connect()
        s.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\nHost: " + second + b"\r\n\r\n")
        [(st, _, body)] = read_answers(s, 1)
        assert st == 400 and "more than one Host" in error_of(body)


def test_garbage_and_bare_lf_are_refused_without_waiting_for_the_header_deadline():
    t = Transport(TransportLimits(header_timeout_s=60.0))
    try:
        for data in (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", b"GET /a HTTP/1.1\nHost: x\n",
                     b"GET /a HTTP/1.1\r\nHost: x\nX-A: 1\r\n"):
            s = t.connect()
            s.sendall(data)
            [(st, _, body)] = read_answers(s, 1, timeout=5)
            assert st == 400, (data, body)
    finally:
        t.close()


def test_a_head_split_across_reads_anywhere_is_served(tr):
    req = get("/split", b"X-Pad: " + b"p" * 3000 + b"\r\n")
    for cut in (1, 5, 20, len(req) - 3, len(req) - 2, len(req) - 1):
        s = tr.connect()
        s.sendall(req[:cut])
        time.sleep(0.05)  # a second read, whichever side of the cut the kernel hands over first
        s.sendall(req[cut:])
        [(st, _, body)] = read_answers(s, 1)
        assert st == 200 and json.loads(body)["target"] == "/split", cut
        s.close()
    assert tr.wait_for(lambda: tr.listener.buffered_bytes == 0)


def test_bytes_after_a_connection_close_request_are_not_read(tr):
    s = tr.connect()
    s.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nnot http at all\r\n\r\n")
    answers = read_answers(s, 2)
    assert [a[0] for a in answers] == [200] and answers[0][1]["connection"] == "close"


# ----------------------------------------------------------------------------- Upgrade and Expect


def test_upgrade_is_ignored_and_the_request_served(tr):
    s = tr.connect()
    up = b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"
    s.sendall(get("/a", up) + post_head("/p", 10, up) + b"0123456789" + get("/c"))
    answers = read_answers(s, 3)
    assert [a[0] for a in answers] == [200, 200, 200]
    assert [json.loads(a[2])["target"] for a in answers] == ["/a", "/p", "/c"]
    assert json.loads(answers[1][2])["body"] == 10 and json.loads(answers[1][2])["start"] == "0123456789"
    assert all("upgrade" not in a[1] for a in answers)
    s.sendall(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    [(st, _, body)] = read_answers(s, 1)
    assert st == 405 and "CONNECT" in error_of(body)


def test_100_continue_when_the_headers_pass(tr):
    s = tr.connect()
    s.sendall(post_head("/p", 10, b"Expect: 100-continue\r\n"))
    s.settimeout(5)
    assert s.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
    s.sendall(b"0123456789")
    [(st, _, body)] = read_answers(s, 1)
    assert st == 200 and json.loads(body)["body"] == 10
    # The body sent with its head: no interim answer, just the final one.
    s.sendall(post_head("/q", 3, b"Expect: 100-continue\r\n") + b"abc")
    data = read_until(s, b"}")
    assert data.startswith(b"HTTP/1.1 200 ") and b"100 Continue" not in data


def test_expect_with_headers_that_fail_gets_the_final_status_and_no_continue():
    t = Transport(token="tok")
    try:
        for extra, length, status in ((b"", 10, 401),
                                      (b"Authorization: Bearer tok\r\n", 100 * MiB, 413),
                                      (b"Authorization: Bearer tok\r\nContent-Encoding: gzip\r\n", 10, 415)):
            s = t.connect()
            s.sendall(post_head("/p", length, b"Expect: 100-continue\r\n" + extra))
            s.settimeout(5)
            data = s.recv(65536)
            assert data.startswith(b"HTTP/1.1 %d " % status) and b"100 Continue" not in data, data[:80]
            assert b"Connection: close" in data
        s = t.connect()
        s.sendall(post_head("/p", 10, b"Expect: tea\r\nAuthorization: Bearer tok\r\n"))
        [(st, _, body)] = read_answers(s, 1)
        assert st == 417 and "tea" in error_of(body)
    finally:
        t.close()


def test_100_continue_waits_for_the_answers_before_it(tr):
    s = tr.connect()
    s.sendall(get("/hold/1") + post_head("/p", 4, b"Expect: 100-continue\r\n"))
    assert tr.wait_for(lambda: len(tr.app.held) == 1)
    s.settimeout(0.3)
    with pytest.raises(socket.timeout):
        s.recv(100)  # nothing before the held request's answer, not even the 100
    tr.release()
    data = read_until(s, b"100 Continue\r\n\r\n")
    assert b"HTTP/1.1 200 " in data and data.index(b"HTTP/1.1 200 ") < data.index(b"HTTP/1.1 100 Continue")
    s.sendall(b"abcd")
    [(st, _, body)] = read_answers(s, 1)
    assert st == 200 and json.loads(body)["target"] == "/p"


# ----------------------------------------------------------------------------- deadlines and drain


def test_empty_lines_do_not_keep_a_connection_open():
    """A CRLF every 0.2 s: the header clock started with the first one ends the connection (408), although
    the idle deadline is far away and bytes keep coming."""
    t = Transport(TransportLimits(header_timeout_s=1.0, idle_timeout_s=300.0))
    try:
        s = t.connect()
        got = b""
        start = time.monotonic()
        s.settimeout(0.2)
        while time.monotonic() - start < 8:
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
        assert got.startswith(b"HTTP/1.1 408 ") and b"Connection: close" in got, got[:80]
        s.close()
        assert t.wait_for(lambda: t.listener.open_connections == 0)
    finally:
        t.close()


def test_empty_lines_right_after_a_request_are_not_a_new_request(tr):
    s = tr.connect()
    s.sendall(post_head("/p", 2) + b"ab\r\n")
    [(st, _, _)] = read_answers(s, 1)
    assert st == 200
    time.sleep(1.5)  # past the header deadline: the CRLF that ended the POST started no clock
    s.sendall(get("/after"))
    [(st, _, body)] = read_answers(s, 1)
    assert st == 200 and json.loads(body)["target"] == "/after"


def test_drain_closes_at_once_every_connection_without_a_complete_request(tr):
    idle = tr.connect()
    blank = tr.connect()
    half_head = tr.connect()
    half_body = tr.connect()
    held = tr.connect()
    blank.sendall(b"\r\n")
    half_head.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n")
    half_body.sendall(post_head("/p", 100) + b"x" * 10)
    held.sendall(get("/hold/1"))
    assert tr.wait_for(lambda: len(tr.app.held) == 1 and tr.listener.open_connections == 5)

    def busy_then_drain() -> None:
        time.sleep(0.5)  # the loop is busy (an inference, say) when the signal comes
        tr.listener.begin_drain()
    tr.loop.call_soon_threadsafe(busy_then_drain)
    time.sleep(0.1)
    sent_late = tr.connect()  # accepted by the kernel and sent while the loop was busy: answered, not reset
    sent_late.sendall(get("/late"))
    idle_late = tr.connect()
    for s in (idle, blank, idle_late):
        assert closed_by_peer(s, 2)
    for s in (half_head, half_body):
        [(st, h, _)] = read_answers(s, 1, timeout=2)
        assert st == 503 and h["connection"] == "close"
    [(st, h, body)] = read_answers(sent_late, 1, timeout=2)
    assert st == 200 and h["connection"] == "close" and json.loads(body)["target"] == "/late"
    assert tr.call(lambda: tr.listener.open_connections) >= 1 and not tr.call(tr.listener.idle)
    tr.release()
    [(st, h, _)] = read_answers(held, 1)
    assert st == 200 and h["connection"] == "close"
    assert tr.wait_for(tr.listener.idle)


# ----------------------------------------------------------------------------- the byte budget


def test_buffered_bytes_counts_heads_bodies_and_requests_until_answered(tr):
    s = tr.connect()
    part = b"POST /hold/p HTTP/1.1\r\nHost: x\r\n"
    s.sendall(part)
    assert tr.wait_for(lambda: tr.listener.buffered_bytes == len(part))
    rest = b"Content-Length: 1000\r\n\r\n"
    s.sendall(rest + b"y" * 10)
    assert tr.wait_for(lambda: tr.listener.buffered_bytes == len(part) + len(rest) + 1000)
    s.sendall(b"y" * 990)
    assert tr.wait_for(lambda: len(tr.app.held) == 1)
    assert tr.buffered == len(part) + len(rest) + 1000  # held by the application until answered
    tr.release()
    [(st, _, _)] = read_answers(s, 1)
    assert st == 200 and tr.wait_for(lambda: tr.listener.buffered_bytes == 0)


def test_bodies_past_the_global_cap_get_503_and_bodiless_requests_still_pass():
    t = Transport(TransportLimits(max_body_bytes=1 * MiB, max_buffered_bytes=3 * MiB + 4096))
    try:
        holders = []
        for _ in range(3):
            s = t.connect()
            s.sendall(post_head("/p", MiB) + b"z" * 1000)  # 1 MiB reserved, never finished
            holders.append(s)
        assert t.wait_for(lambda: t.listener.buffered_bytes >= 3 * MiB)
        s = t.connect()
        s.sendall(post_head("/p", MiB, b"Expect: 100-continue\r\n"))
        [(st, h, body)] = read_answers(s, 1)
        assert st == 503 and h["connection"] == "close" and h["retry-after"] == "1"
        assert "max_buffered_bytes" in error_of(body)
        assert ("shed", "buffered_bytes") in t.call(lambda: list(t.events))
        s = t.connect()
        s.sendall(get("/health"))
        assert read_answers(s, 1)[0][0] == 200
        for h_ in holders:
            h_.close()
        assert t.wait_for(lambda: t.listener.buffered_bytes == 0)
        s = t.connect()
        s.sendall(post_head("/p", MiB) + b"z" * MiB)
        [(st, _, body)] = read_answers(s, 1)
        assert st == 200 and json.loads(body)["body"] == MiB
    finally:
        t.close()


def test_closed_connections_free_what_they_held_without_the_cycle_collector():
    """16 connections each hold half of a 1 MiB body, then close: with the cycle collector off, no
    connection object survives and the budget is back to 0 (the parser's cycle is broken on close)."""
    t = Transport(TransportLimits(max_body_bytes=MiB))
    socks = []
    gc.collect()
    gc.disable()
    try:
        for _ in range(16):
            s = t.connect()
            s.sendall(post_head("/p", MiB) + b"w" * (MiB // 2))
            socks.append(s)
        assert t.wait_for(lambda: t.listener.open_connections == 16)
        for s in socks:
            s.close()
        assert t.wait_for(lambda: t.listener.open_connections == 0)

        def alive() -> int:
            return sum(isinstance(o, HttpConnection) for o in gc.get_objects())
        assert t.call(alive) == 0
        assert t.buffered == 0
    finally:
        gc.enable()
        t.close()


def test_the_buffer_cap_must_hold_one_largest_body():
    with pytest.raises(UsageError, match="max_buffered_bytes .* must be at least max_body_bytes"):
        TransportLimits(max_body_bytes=8 * MiB, max_buffered_bytes=4 * MiB)


def test_the_budget_returns_memory_after_a_large_release_only():
    from edge.serve.http.budget import ByteBudget

    b = ByteBudget(64 * MiB)
    b.take(8 * MiB)
    b.give(8 * MiB)
    assert not b.settle()  # one large body at a time: no trim per request
    for _ in range(4):
        b.take(8 * MiB)
    b.give(32 * MiB)
    assert b.settle() and b.used == 0 and b.peak == 0
    assert not b.settle()


def test_large_heads_across_reads_are_served_and_endless_ones_refused(tr):
    big = get("/big", b"".join(b"X-F%d: %s\r\n" % (i, b"v" * 1000) for i in range(14)))  # 14 KiB of fields
    s = tr.connect()
    for i in range(0, len(big), 3000):
        s.sendall(big[i:i + 3000])
        time.sleep(0.01)
    [(st, _, body)] = read_answers(s, 1)
    assert st == 200 and json.loads(body)["target"] == "/big"
    s = tr.connect()
    try:
        s.sendall(b"GET /endless HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * (200 << 10))
    except OSError:
        pass  # refused and closed while sending: the answer is still there to read
    [(st, _, body)] = read_answers(s, 1)
    assert st == 431 and "has not ended" in error_of(body)
    assert tr.wait_for(lambda: tr.listener.buffered_bytes == 0)


def test_an_upgrade_request_body_split_across_reads_is_kept(tr):
    s = tr.connect()
    s.sendall(post_head("/p", 10, b"Connection: Upgrade\r\nUpgrade: h2c\r\n") + b"01234")
    time.sleep(0.05)
    s.sendall(b"56789" + get("/next"))
    (st1, _, b1), (st2, _, b2) = read_answers(s, 2)
    assert st1 == 200 and json.loads(b1)["start"] == "0123456789" and json.loads(b2)["target"] == "/next"
