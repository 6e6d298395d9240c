"""The cache of checked request heads (edge/serve/http/heads.py): bounded, and, behind a real Listener on
loopback, a head sent again is served as parsing it would be, with the budget and authorization checked again."""

from __future__ import annotations

import json

from edge.serve.http.connection import TransportLimits
from edge.serve.http.heads import MAX_HEAD_BYTES, HeadCache
from tests.edge.serve.http._transport import Transport, read_answers

MiB = 1 << 20


def post(path: str, body: bytes, extra: bytes = b"") -> bytes:
    return b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n%s\r\n%s" % (path.encode(), len(body), extra, body)


def get(path: str, extra: bytes = b"") -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: x\r\n%s\r\n" % (path.encode(), extra)


def test_the_cache_keeps_at_most_its_capacity_forgetting_the_oldest_and_no_long_heads():
    c = HeadCache(capacity=3)
    for i in range(5):
        c.put(b"h%d" % i, b"/t%d" % i, {"host": "x"}, "GET", True, i)
    assert len(c) == 3 and c.get(b"h0") is None and c.get(b"h1") is None
    got = c.get(b"h4")
    assert got is not None and (got.target, got.length, got.method, got.keep_alive) == ("/t4", 4, "GET", True)
    c.put(b"x" * (MAX_HEAD_BYTES + 1), b"/", {}, "GET", True, 0)
    assert c.get(b"x" * (MAX_HEAD_BYTES + 1)) is None and len(c) == 3


def test_the_cache_copies_the_headers_it_keeps():
    c = HeadCache()
    h = {"host": "x"}
    c.put(b"h", b"/", h, "GET", True, 0)
    h["host"] = "changed"
    got = c.get(b"h")
    assert got is not None and got.headers == {"host": "x"}


def test_a_head_sent_again_is_answered_as_the_first_one_in_one_read_and_across_reads():
    t = Transport()
    try:
        s = t.connect()
        req = post("/p", b"a" * 3000)
        s.sendall(req * 3)  # pipelined: the second and third heads come from the cache
        first = read_answers(s, 3)
        assert [st for st, _, _ in first] == [200, 200, 200]
        assert len({b for _, _, b in first}) == 1 and json.loads(first[0][2])["body"] == 3000
        assert t.call(lambda: len(t.listener.heads)) == 1
        head, body = req[:req.index(b"\r\n\r\n") + 4], req[req.index(b"\r\n\r\n") + 4:]
        s.sendall(head)  # a cached head, its body in three more reads
        for piece in (body[:10], body[10:2000], body[2000:]):
            s.sendall(piece)
        [(st, _, b)] = read_answers(s, 1)
        assert st == 200 and b == first[0][2]
        s.sendall(get("/g") * 2)  # a head without a body, cached too
        assert [(st, json.loads(b)["target"]) for st, _, b in read_answers(s, 2)] == [(200, "/g"), (200, "/g")]
        assert t.call(lambda: len(t.listener.heads)) == 2
        seen = t.call(lambda: [(r.method, r.target, r.headers, len(r.body), r.keep_alive) for r in t.app.seen])
        assert seen[:4] == [seen[0]] * 4 and seen[4] == seen[5]
        assert t.wait_for(lambda: t.listener.buffered_bytes == 0)
    finally:
        t.close()


def test_a_cached_head_is_authorized_again():
    t = Transport(token="s3cret")
    try:
        s = t.connect()
        req = get("/g", b"Authorization: Bearer s3cret\r\n")
        s.sendall(req)
        assert read_answers(s, 1)[0][0] == 200 and t.call(lambda: len(t.listener.heads)) == 1
        t.app.token = "other"  # the application now refuses what it accepted
        s.sendall(req)
        [(st, _, _)] = read_answers(s, 1)
        assert st == 401
    finally:
        t.close()


def test_a_cached_head_is_refused_when_the_budget_is_full():
    t = Transport(TransportLimits(max_body_bytes=MiB, max_buffered_bytes=2 * MiB + 4096))
    try:
        s = t.connect()
        req = post("/p", b"z" * MiB)
        s.sendall(req)
        assert read_answers(s, 1)[0][0] == 200
        holders = []
        for _ in range(2):  # 1 MiB reserved each, never finished
            h = t.connect()
            h.sendall(req[:-1000])
            holders.append(h)
        assert t.wait_for(lambda: t.listener.buffered_bytes >= 2 * MiB)
        s.sendall(req)  # the same head, from the cache: still refused by the budget
        [(st, h_, body)] = read_answers(s, 1)
        assert st == 503 and h_["retry-after"] == "1" and "max_buffered_bytes" in json.loads(body)["error"]
        assert ("shed", "buffered_bytes") in t.call(lambda: list(t.events))
        for h in holders:
            h.close()
        assert t.wait_for(lambda: t.listener.buffered_bytes == 0)
    finally:
        t.close()


def test_heads_asking_for_100_continue_or_an_upgrade_are_not_cached():
    t = Transport()
    try:
        s = t.connect()
        s.sendall(post("/p", b"", b"Expect: 100-continue\r\n") + get("/u", b"Connection: Upgrade\r\nUpgrade: x\r\n"))
        assert [st for st, _, _ in read_answers(s, 2)] == [200, 200]
        assert t.call(lambda: len(t.listener.heads)) == 0
    finally:
        t.close()
