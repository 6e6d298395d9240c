"""The load generator against the real daemon (`edgekit serve` subprocess), plus edge cases against a stub."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from benchmarks.evaluate import loadgen
from benchmarks.evaluate.daemon_proc import Daemon, serve_argv
from benchmarks.evaluate.workload import make_workload
from tests.benchmarks._eval_fixtures import make_eval_bundle

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def evb(tmp_path_factory):
    return make_eval_bundle(tmp_path_factory.mktemp("loadgen"))


@pytest.fixture(scope="module")
def daemon(evb, tmp_path_factory):
    log = tmp_path_factory.mktemp("daemon") / "daemon.log"
    d = Daemon(serve_argv(str(evb.bundle), str(evb.table), "adaptive", None, "best-effort", None), log, 120)
    d.start()
    loadgen.wait_ready(d.url, timeout_s=30)
    yield d
    rc = d.stop()
    assert rc is not None


# ----------------------------------------------------------------------------- the real daemon


def test_closed_loop_against_the_daemon(evb, daemon):
    images, labels, _ = loadgen.load_eval_set(str(evb.bundle))
    wl = make_workload(len(images), 40, "uniform:2:30", "closed", seed=1)
    res = loadgen.run_load(daemon.url, images, labels, wl, duration_s=60)
    assert not res.truncated and len(res.records) == 40
    assert [r.index for r in res.records] == list(range(40))
    s = res.summary()
    assert s["answered"] == 40 and s["errors"] == 0, [r.error for r in res.records if r.error][:3]
    for r in res.records:
        assert r.status == 200
        assert r.variant in evb.variants
        assert r.label == int(labels[r.image_index])
        assert r.correct == (r.pred == r.label)
        assert r.deadline_met == (r.e2e_ms <= r.deadline_ms)
        assert r.inference_ms is not None and r.total_ms is not None and r.e2e_ms >= r.inference_ms
        assert r.server_deadline_met is not None and r.policy == "adaptive"
    # The variants are linear classifiers with 64-82% accuracy on Fashion-MNIST.
    assert 0.4 <= s["accuracy"] <= 1.0
    assert s["p50_ms"] > 0 and s["throughput_rps"] > 0


def test_poisson_against_the_daemon(evb, daemon):
    images, labels, _ = loadgen.load_eval_set(str(evb.bundle))
    wl = make_workload(len(images), 40, "fixed:50", "poisson:100", seed=2)
    res = loadgen.run_load(daemon.url, images, labels, wl, duration_s=60, workers=4)
    assert len(res.records) == 40 and [r.index for r in res.records] == list(range(40))
    # Latency counts from the scheduled arrival, and requests were sent no earlier than scheduled.
    for r in res.records:
        assert r.sent_s >= r.arrival_s - 1e-3
        assert r.status in (200, 503)
    assert res.summary()["answered"] >= 30


def test_an_open_loop_client_serves_spans_each_answered_before_it_returns(evb, daemon):
    """``OpenLoopClient.serve`` issues a span at its arrivals on the clock it is given and returns when every answer
    is back; a second span on a clock that stopped in between starts where the first ended: requests whose arrival
    has passed on that clock go at once, their latency counted from the scheduled arrival."""
    import dataclasses
    import time

    images, labels, _ = loadgen.load_eval_set(str(evb.bundle))
    wl = make_workload(len(images), 20, "fixed:50", "poisson:500", seed=4)
    wl = dataclasses.replace(wl, arrivals_s=np.linspace(0.0, 0.038, 20))  # one every 2 ms
    with loadgen.OpenLoopClient(daemon.url, images, labels, wl, workers=3) as client:
        t0 = time.perf_counter()
        first, n1 = client.serve(0, 10, t0)
        own = time.perf_counter() - t0
        time.sleep(0.1)  # another policy's turn: not on this clock
        t1 = time.perf_counter() - own
        client_late = 0.015  # the clock resumes 15 ms late for the second span: request 10 was due at 20 ms
        second, n2 = client.serve(10, 20, t1 - client_late)
    assert (n1, n2) == (10, 10)
    assert [r.index for r in first] == list(range(10)) and [r.index for r in second] == list(range(10, 20))
    assert all(r.status in (200, 503) for r in first + second)
    for r in first + second:
        assert r.arrival_s == pytest.approx(float(wl.arrivals_s[r.index])) and r.sent_s >= r.arrival_s - 1e-3
    # The second span's first requests were already due: sent at once, each late by what it waited.
    assert second[0].sent_s - second[0].arrival_s > 0.005 and second[0].e2e_ms > 5.0
    with pytest.raises(ValueError, match="arrival times"):
        loadgen.OpenLoopClient(daemon.url, images, labels, make_workload(len(images), 3, "fixed:5", "closed", 0))


def test_duration_bound(evb, daemon):
    images, labels, _ = loadgen.load_eval_set(str(evb.bundle))
    wl = make_workload(len(images), 5000, "fixed:50", "poisson:20", seed=3)  # ~250 s of arrivals
    res = loadgen.run_load(daemon.url, images, labels, wl, duration_s=0.5, workers=2)
    assert res.truncated and 1 <= len(res.records) < 60
    assert res.workload.count == len(res.records)


def test_cli_against_the_daemon(evb, daemon, tmp_path):
    out = tmp_path / "lg.json"
    proc = subprocess.run(
        [sys.executable, "-m", "edgekit.cli", "loadgen", daemon.url, "--bundle", str(evb.bundle), "--count", "15",
         "--deadline", "fixed:20", "--seed", "4", "--out", str(out)],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    assert "accuracy" in proc.stdout and "variants used" in proc.stdout
    doc = json.loads(out.read_text())
    assert doc["summary"]["count"] == 15 and len(doc["records"]) == 15
    assert doc["workload"]["deadline"] == "fixed:20" and doc["workload"]["seed"] == 4
    rec = doc["records"][0]
    for key in ("correct", "variant", "e2e_ms", "deadline_met", "predicted_ms", "queue_ms", "inference_ms", "slowdown"):
        assert key in rec


def test_cli_refuses_remote_and_bad_specs(evb):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "edgekit.cli", "loadgen", *args], capture_output=True, text=True,
                              timeout=60, cwd=REPO)

    p = cli("http://192.0.2.1:8000", "--bundle", str(evb.bundle))
    assert p.returncode == 2 and "non-loopback" in p.stderr and "--allow-remote" in p.stderr
    p = cli("http://127.0.0.1:9", "--bundle", str(evb.bundle), "--deadline", "uniform:20:2")
    assert p.returncode == 2 and "LO (20) is above HI (2)" in p.stderr
    p = cli("http://127.0.0.1:9", "--bundle", str(evb.bundle), "--count", "0")
    assert p.returncode == 2 and "--count" in p.stderr


# ----------------------------------------------------------------------------- a stub for rare answers


class _Stub(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def _send(self, code: int, doc: dict) -> None:
        body = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._send(200, {"live": True})

    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        dl = req["parameters"]["deadline_ms"]
        data = req["inputs"][0]["data"]
        if dl < 2:
            return self._send(408, {"error": "deadline cannot be met: 1 ms < fastest 3 ms",
                                    "parameters": {"deadline_met": False}})
        if dl < 4:
            return self._send(503, {"error": "queue full (64 waiting); retry later"})
        logits = [0.0] * 10
        logits[sum(data) % 10] = 1.0  # no "class" output: the client falls back to argmax
        self._send(200, {"outputs": [{"name": "logits", "datatype": "FP32", "shape": [1, 10], "data": logits}],
                         "parameters": {"variant": "stub@x", "predicted_ms": 1.0, "queue_ms": 0.0,
                                        "inference_ms": 0.5, "total_ms": 0.7, "deadline_ms": dl,
                                        "deadline_met": True, "slowdown": 1.0, "policy": "stub"}})


def test_rejected_overloaded_and_logits_only_answers():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (20, 4, 4, 1), dtype=np.uint8)
        labels = np.asarray([int(im.astype(np.int64).sum()) % 10 for im in images])
        wl = make_workload(20, 30, "uniform:0.5:8", seed=0)
        res = loadgen.run_load(url, images, labels, wl, duration_s=30)
        s = res.summary()
        n408 = int(np.sum(wl.deadlines_ms < 2))
        n503 = int(np.sum((wl.deadlines_ms >= 2) & (wl.deadlines_ms < 4)))
        assert s["rejected"] == n408 and s["overloaded"] == n503 and s["errors"] == 0
        for r in res.records:
            if r.status == 200:
                assert r.correct and r.pred == r.label and r.variant == "stub@x"
            else:
                assert not r.correct and not r.deadline_met and r.error
        rej = [r for r in res.records if r.status == 408]
        assert all(r.server_deadline_met is False and "cannot be met" in r.error for r in rej)
        assert s["accuracy"] == pytest.approx((30 - n408 - n503) / 30, abs=1e-3)
        assert s["variants"] == {"stub@x": 30 - n408 - n503}
    finally:
        srv.shutdown()
        srv.server_close()


def test_url_checks():
    assert loadgen.parse_url("http://127.0.0.1:8000/") == ("127.0.0.1", 8000, "")
    assert loadgen.parse_url("http://localhost:81")[0] == "localhost"
    assert loadgen.parse_url("http://[::1]:81")[0] == "::1"
    with pytest.raises(ValueError, match="non-loopback"):
        loadgen.parse_url("http://10.0.0.5:8000")
    assert loadgen.parse_url("http://10.0.0.5:8000", allow_remote=True)[1] == 8000
    with pytest.raises(ValueError, match="http://"):
        loadgen.parse_url("https://127.0.0.1:8000")
    with pytest.raises(ValueError, match="no host"):
        loadgen.parse_url("http://:80")


def test_unreachable_daemon_is_recorded_not_raised():
    images = np.zeros((3, 2, 2, 1), np.uint8)
    wl = make_workload(3, 3, "fixed:5", seed=0)
    # Port 9 (discard) is closed on loopback: every request fails fast with status 0.
    res = loadgen.run_load("http://127.0.0.1:9", images, np.zeros(3, np.int64), wl, duration_s=10, timeout_s=2)
    assert [r.status for r in res.records] == [0, 0, 0]
    assert all("Connection" in r.error or "refused" in r.error.lower() for r in res.records)
    with pytest.raises(RuntimeError, match="not ready"):
        loadgen.wait_ready("http://127.0.0.1:9", timeout_s=0.3)


class _CodecStub(_Stub):
    """Answers with edge.v2.codec, as the daemon does: class = pixel sum mod 10."""

    def do_POST(self):
        from edge.v2.codec import encode_infer_response, parse_infer_request
        from edge.v2.errors import ProtocolError, encode_error

        body = self.rfile.read(int(self.headers["Content-Length"]))
        try:
            req = parse_infer_request(body, self.headers.get("Inference-Header-Content-Length"), (4, 4, 1), None)
        except ProtocolError as e:
            data, headers, code = encode_error(e.message), {"Content-Type": "application/json"}, e.status
        else:
            label = int(req.image.astype(np.int64).sum()) % 10
            scores = np.eye(10, dtype=np.float32)[label][None]
            data, headers = encode_infer_response(label, scores, req.outputs, "edgekit", req.request_id,
                                                  {"variant": "stub@x", "deadline_met": True})
            code = 200
        self.send_response(code)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.mark.parametrize("binary", [False, True])
def test_json_and_binary_requests_through_the_codec(binary):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _CodecStub)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        rng = np.random.default_rng(1)
        images = rng.integers(0, 256, (8, 4, 4, 1), dtype=np.uint8)
        labels = np.asarray([int(im.astype(np.int64).sum()) % 10 for im in images])
        wl = make_workload(8, 12, "fixed:50", seed=0)
        res = loadgen.run_load(url, images, labels, wl, duration_s=30, binary=binary)
        assert [r.status for r in res.records] == [200] * 12, [r.error for r in res.records]
        assert all(r.correct and r.variant == "stub@x" and r.server_deadline_met for r in res.records)
    finally:
        srv.shutdown()
        srv.server_close()


def test_on_time_accuracy_counts_only_answers_right_and_on_time():
    """Hand-made records: right and on time, right but late, wrong on time, rejected; the daemon's clock decides
    where it said, else end to end."""
    R = loadgen.RequestRecord

    def rec(i, status=200, correct=True, met=True, server=None):
        return R(index=i, image_index=i, label=1, deadline_ms=5.0, arrival_s=0.1 * i, sent_s=0.1 * i,
                 e2e_ms=1.0 if met else 9.0, status=status, pred=1 if correct else 2, correct=correct,
                 deadline_met=met and status == 200, server_deadline_met=server)

    records = [
        rec(0), rec(1),  # right, on time
        rec(2, met=False),  # right, late
        rec(3, correct=False),  # wrong, on time
        rec(4, status=408, correct=False, met=False),  # rejected: no answer
        rec(5, met=False, server=True),  # late end to end, on time on the daemon's clock: on time
        rec(6, met=True, server=False),  # the reverse: late
        rec(7, status=503, correct=False, met=False),  # overloaded
    ]
    assert [loadgen.on_time_and_correct(r) for r in records] == [True, True, False, False, False, True, False, False]
    s = loadgen.summarize(records, wall_s=2.0)
    assert s["on_time_accuracy"] == 3 / 8  # of ALL requests, the rejected and overloaded ones included
    assert s["accuracy"] == 5 / 8  # right, on time or not
    assert s["answer_accuracy"] == round(5 / 6, 4)  # of the 6 answers
    assert s["goodput_rps"] == 1.5  # the same 3 answers over 2 s
    assert list(s)[5:8] == ["on_time_accuracy", "accuracy", "answer_accuracy"]
    empty = loadgen.summarize([], wall_s=0.0)
    assert empty["on_time_accuracy"] is None and empty["answer_accuracy"] is None
    assert loadgen.summarize([rec(0, status=408, correct=False, met=False)], 1.0)["answer_accuracy"] is None
    assert "on-time accuracy 37.50% (correct and on time, of all requests)" in loadgen.format_summary(s)


def test_fine_timer_slack_is_set_for_the_block_and_restored():
    import ctypes
    import sys

    from benchmarks.evaluate.loadgen import PR_GET_TIMERSLACK, fine_timer_slack

    if not sys.platform.startswith("linux"):
        with fine_timer_slack():
            pass
        return
    libc = ctypes.CDLL(None)
    before = libc.prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0)
    with fine_timer_slack(2000):
        assert libc.prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0) == 2000
    assert libc.prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0) == before
