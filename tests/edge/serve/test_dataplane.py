"""The data plane (edge/serve/dataplane.py): in process on an event loop with no HTTP, then through the daemon
(policies, EDF and the queue, hot reload)."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edge.runtime.classifier import AdaptiveClassifier, RuntimeOptions
from edge.runtime.scheduler import InferenceRequest, QueueFull, ShuttingDown
from edge.serve.dataplane import DataPlane
from edge.serve.errors import (
    DeadlineRejected,
    Draining,
    InvalidInput,
    ModelNotFound,
    ReloadFailed,
    ReloadRunning,
    VersionNotFound,
)
from edge.serve.metrics import ServerMetrics
from edge.v2.errors import ProtocolError
from tests.edge._daemon_http import INFER, VALID, C, H, W, call, infer_doc, jcall
from tests.edge._fixtures import DaemonProc, copy_bundle, start_daemon

# ----------------------------------------------------------------------------- in process


def _open(fx, **options) -> AdaptiveClassifier:
    return AdaptiveClassifier.open(str(fx.bundle), str(fx.selected_table), str(fx.profile),
                                   options=RuntimeOptions(workers=1, **options))


@pytest.fixture(scope="module")
def clf(fx):
    c = _open(fx)
    yield c
    c.close(drain=False)


class Plane:
    """A data plane on its own event loop, and the answers its callbacks received."""

    def __init__(self, clf: AdaptiveClassifier):
        self.loop = asyncio.new_event_loop()
        self.metrics = ServerMetrics()
        self.plane = DataPlane(clf, self.loop, self.metrics, "edgekit", default_deadline_ms=None,
                               transport=lambda: {"loop": "test"})

    def infer(self, doc: dict, deadline_ms: float | None = None) -> asyncio.Future:
        """Submit one JSON infer request; the future gets (answer, headers)."""
        fut = self.loop.create_future()
        if deadline_ms is not None:
            doc = dict(doc, parameters={"deadline_ms": deadline_ms})
        now = time.perf_counter()
        self.plane.infer("edgekit", json.dumps(doc).encode(), None, now, now, lambda a, h: fut.set_result((a, h)))
        return fut

    def wait(self, *futs: asyncio.Future, timeout: float = 60.0) -> list:
        self.loop.run_until_complete(asyncio.wait_for(asyncio.gather(*futs), timeout))
        return [f.result() for f in futs]

    def close(self) -> None:
        self.plane.close()
        self.loop.close()


@pytest.fixture
def plane(clf):
    p = Plane(clf)
    yield p
    p.close()


def test_metadata_and_health_without_http(plane, fx):
    dp = plane.plane
    assert dp.live() == {"live": True} and dp.server_ready() == {"ready": True}
    assert dp.server_metadata()["name"] == "edgekit"
    doc = dp.model_metadata("edgekit")
    assert doc["inputs"][0]["shape"] == [-1, H, W, C] and [v["variant"] for v in doc["variants"]] == list(fx.variants)
    assert dp.model_ready("edgekit") == {"name": "edgekit", "ready": True}
    assert dp.repository_index()[0]["state"] == "READY"
    with pytest.raises(ModelNotFound, match="unknown model 'resnet'; this daemon serves 'edgekit'"):
        dp.model_metadata("resnet")
    with pytest.raises(VersionNotFound, match="unknown version '7'"):
        dp.check_version("edgekit", "7")
    dp.check_version("edgekit", "1")
    st = dp.status()
    assert st["transport"] == {"loop": "test", "inference": "inline on the event loop"}
    assert st["queue_depth"] == 0 and st["workers"] == 1 and st["draining"] is False


def test_infer_answers_through_the_callback_and_counts(plane, fx):
    (data, headers), = plane.wait(plane.infer(infer_doc(), 10_000))
    assert isinstance(data, bytes) and headers["X-Edgekit-Dispatch-Seq"].isdigit()
    assert "Inference-Header-Content-Length" not in headers  # JSON outputs unless binary ones are asked for
    doc = json.loads(data)
    assert doc["parameters"]["variant"] == fx.variants[-1] and doc["parameters"]["deadline_met"] is True
    assert [o["name"] for o in doc["outputs"]] == ["logits", "class"]
    assert plane.metrics.value("met") == 1


def test_requests_read_in_one_pass_run_earliest_deadline_first(plane):
    """Submitted before the loop runs (as the requests one read pass finds): answered in deadline order."""
    futs = {k: plane.infer(infer_doc(), dl) for k, dl in (("B", 30_000), ("C", 10_000), ("D", 20_000))}
    plane.wait(*futs.values())
    seq = {k: int(f.result()[1]["X-Edgekit-Dispatch-Seq"]) for k, f in futs.items()}
    assert sorted(seq, key=seq.__getitem__) == ["C", "D", "B"], seq


def test_refusals_are_domain_errors(fx):
    c = _open(fx, queue_size=2)
    p = Plane(c)
    try:
        with pytest.raises(ModelNotFound):
            p.plane.infer("other", json.dumps(VALID).encode(), None, 0.0, 0.0, lambda a, h: None)
        with pytest.raises(ProtocolError) as e:
            p.plane.infer("edgekit", b"{bad", None, 0.0, 0.0, lambda a, h: None)
        assert e.value.status == 400
        queued = [p.infer(infer_doc(), 10_000) for _ in range(2)]
        with pytest.raises(QueueFull, match="queue full"):
            p.infer(infer_doc(), 10_000)
        p.wait(*queued)
        p.plane.begin_drain()
        assert not p.plane.ready and p.plane.status()["draining"] is True and p.plane.idle
        with pytest.raises(Draining):
            p.infer(infer_doc(), 10_000)
    finally:
        p.close()
        c.close(drain=False)
    with pytest.raises(ShuttingDown):  # the runtime itself refuses once closed
        c.submit(InferenceRequest(np.zeros((1, H, W, C), np.uint8), 10_000.0))


def test_a_deadline_nothing_meets_under_reject_is_answered_at_once(fx):
    c = _open(fx, miss="reject")
    p = Plane(c)
    try:
        fut = p.infer(infer_doc(), 0.001)
        assert fut.done()  # answered inside infer(), before the loop ran
        exc, headers = fut.result()
        assert isinstance(exc, DeadlineRejected) and exc.message.startswith("deadline cannot be met")
        assert exc.parameters["variant"] is None and exc.parameters["deadline_met"] is False
    finally:
        p.close()
        c.close(drain=False)


def test_reload_answers_through_the_callback_and_one_at_a_time(plane, fx, tmp_path):
    with pytest.raises(InvalidInput, match="JSON object"):
        plane.plane.reload(None, b"[1]", lambda a, h: None)
    with pytest.raises(InvalidInput, match="path string"):
        plane.plane.reload(None, b'{"table": 5}', lambda a, h: None)
    with pytest.raises(ModelNotFound):
        plane.plane.reload("other", b"", lambda a, h: None)
    bad, good = plane.loop.create_future(), plane.loop.create_future()
    plane.plane.reload(None, json.dumps({"table": str(tmp_path / "missing.json")}).encode(),
                       lambda a, h: bad.set_result(a))
    with pytest.raises(ReloadRunning):
        plane.plane.reload(None, b"", lambda a, h: good.set_result(a))
    failed, = plane.wait(bad)
    assert isinstance(failed, ReloadFailed) and "still serving" in failed.message
    plane.plane.reload("edgekit", b"", lambda a, h: good.set_result(a))
    ok, = plane.wait(good)
    assert ok["reloaded"] is True and ok["variants"] == list(fx.variants)
    assert plane.metrics.reloads == {"ok": 1, "failed": 1}


# ----------------------------------------------------------------------------- policies, queue, EDF (the daemon)


def test_reject_policy_answers_408_at_once(fx):
    with start_daemon("--miss", "reject", "--workers", "2") as d:
        assert jcall(d, "GET", "/admin/status")[2]["workers"] == 2
        t = time.perf_counter()
        s, _, doc = jcall(d, "POST", INFER, infer_doc(deadline=0.001))
        assert s == 408
        assert (time.perf_counter() - t) < 2.0
        assert doc["error"].startswith("deadline cannot be met")
        assert doc["parameters"]["deadline_met"] is False and doc["parameters"]["variant"] is None
        s, _, doc = jcall(d, "POST", INFER, infer_doc(deadline=10_000))
        assert s == 200 and doc["parameters"]["deadline_met"]
        s, _, data = call(d, "GET", "/metrics")
        assert 'edgekit_requests_total{outcome="rejected"} 1' in data.decode()


def _post_async(d, doc, out: dict, key):
    def go():
        out[key] = call(d, "POST", INFER, json.dumps(doc).encode())
    t = threading.Thread(target=go)
    t.start()
    return t



def test_edf_order_and_queue_full(fx):
    slow = fx.variants[-1]
    # Every inference takes 1.5 s more, so A holds the only worker while B, C, D queue up.
    with start_daemon("--policy", f"static:{slow}", "--inject-delay-ms", "1500", "--queue-size", "3") as d:
        out: dict = {}
        threads = [_post_async(d, infer_doc(deadline=60_000), out, "A")]
        time.sleep(0.3)
        for key, dl in [("B", 30_000), ("C", 10_000), ("D", 20_000)]:
            threads.append(_post_async(d, infer_doc(deadline=dl), out, key))
            time.sleep(0.15)
        assert _wait(lambda: "edgekit_queue_depth 3" in call(d, "GET", "/metrics")[2].decode(), 5)
        s, h, data = call(d, "POST", INFER, json.dumps(infer_doc(deadline=1000)).encode())
        assert s == 503 and h["retry-after"] == "1"
        assert json.loads(data)["error"] == "queue full (3 waiting); retry later"
        for t in threads:
            t.join(30)
        seq = {k: int(v[1]["x-edgekit-dispatch-seq"]) for k, v in out.items()}
        assert all(v[0] == 200 for v in out.values())
        assert seq == {"A": 0, "C": 1, "D": 2, "B": 3}, seq
        total = {k: json.loads(v[2])["parameters"]["total_ms"] for k, v in out.items()}
        assert total["C"] < total["D"] < total["B"]
        queue = {k: json.loads(v[2])["parameters"]["queue_ms"] for k, v in out.items()}
        assert queue["B"] > 3000  # waited behind A, C and D
        s, _, data = call(d, "GET", "/metrics")
        assert 'edgekit_requests_total{outcome="queue_full"} 1' in data.decode()


def test_adaptive_moves_to_faster_variants_when_the_board_slows(fx):
    """--inject-delay-ms makes every inference D ms slower than the table. D is 20x the slow
    variant's median, so the observed ratio (~21) stays inside the filter's clip range. Once the
    slowdown factor has caught up, the slow variant's prediction (p95 x ~21) cannot fit a deadline
    of 2 x its p95, so the selector moves to a faster variant."""
    big = fx.variants[-1]
    row = json.loads(fx.selected_table.read_text())["rows"][-1]
    delay = 20 * row["p50_ms"]
    dl = 2 * row["p95_ms"] + 0.5  # the table says the slow variant fits (0.5 ms for parsing and encoding)
    with start_daemon("--inject-delay-ms", str(delay)) as d:
        seen = []
        # How many requests the filter needs depends on its gain; bound the wait by count.
        for _ in range(60):
            s, _, doc = jcall(d, "POST", INFER, infer_doc(deadline=dl))
            assert s == 200
            seen.append((doc["parameters"]["variant"], doc["parameters"]["slowdown"]))
            if len(seen) >= 3 and seen[-1][0] != big:
                break
        assert seen[0][0] == big  # the table says it fits
        assert seen[-1][1] > 2 and seen[-1][0] != big, seen



# ----------------------------------------------------------------------------- hot reload (the daemon)


def _write_table(src: Path, dst: Path, keep: list[str] | None = None, mutate=None) -> None:
    d = json.loads(src.read_text())
    if keep is not None:
        d["rows"] = [r for r in d["rows"] if r["variant"] in keep]
    if mutate:
        mutate(d)
    tmp = dst.with_suffix(".tmp")
    tmp.write_text(json.dumps(d))
    tmp.replace(dst)


def _wait(pred, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_hot_reload_good_and_bad(fx, tmp_path):
    table = tmp_path / "selected.json"
    shutil.copy(fx.selected_table, table)
    v = list(fx.variants)
    with DaemonProc(fx.bundle, table, profile=fx.profile) as d:
        def variants():
            return [x["variant"] for x in jcall(d, "GET", "/v2/models/edgekit")[2]["variants"] if x["ready"]]

        assert variants() == v
        # Good: two variants.
        _write_table(fx.selected_table, table, keep=[v[0], v[1]])
        s, _, doc = jcall(d, "POST", "/admin/reload")
        assert s == 200 and doc["reloaded"] and doc["variants"] == [v[0], v[1]]
        assert variants() == [v[0], v[1]]
        s, _, doc = jcall(d, "POST", INFER, infer_doc(deadline=10_000))
        assert doc["parameters"]["variant"] == v[1]
        # Bad: truncated JSON, a non-monotonic table, unknown variants only. The old table stays.
        table.write_text(table.read_text()[:100])
        s, _, doc = jcall(d, "POST", "/admin/reload")
        assert s == 400 and "reload failed" in doc["error"] and "still serving" in doc["error"]
        _write_table(fx.selected_table, table, mutate=lambda t: t["rows"].reverse())
        s, _, doc = jcall(d, "POST", "/v2/repository/models/edgekit/load")
        assert s == 400 and "not monotonic" in doc["error"]

        def bogus(t):
            for r in t["rows"]:
                r["variant"] = r["variant"].replace("@", "-x@")
                r["artifact_id"] = r["artifact_id"] + "-x"
        _write_table(fx.selected_table, table, mutate=bogus)
        s, _, doc = jcall(d, "POST", "/admin/reload")
        assert s == 400 and "no variant" in doc["error"]
        assert variants() == [v[0], v[1]]
        assert jcall(d, "POST", INFER, infer_doc(deadline=10_000))[2]["parameters"]["variant"] == v[1]
        # Reload from another path given in the body, through the KServe repository endpoint.
        s, _, doc = jcall(d, "POST", "/v2/repository/models/edgekit/load", {"table": str(fx.selected_table)})
        assert s == 200 and variants() == v
        # SIGHUP re-reads the current table path (now fx.selected_table); a bad file at the first path is ignored.
        gen = jcall(d, "GET", "/admin/status")[2]["generation"]
        d.signal(signal.SIGHUP)
        assert _wait(lambda: jcall(d, "GET", "/admin/status")[2]["generation"] == gen + 1)
        s, _, data = call(d, "GET", "/metrics")
        text = data.decode()
        assert 'edgekit_table_reloads_total{result="ok"} 3' in text
        assert 'edgekit_table_reloads_total{result="failed"} 3' in text


def test_reload_while_a_reload_runs_is_refused_with_409_or_served(fx):
    with start_daemon() as d:
        out: dict = {}

        def go(k):
            out[k] = jcall(d, "POST", "/admin/reload")[0]
        ts = [threading.Thread(target=go, args=(k,)) for k in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(30)
        assert set(out.values()) <= {200, 409} and 200 in out.values()


def _bad_tables(src: Path):
    """(name, text) of selected tables a reload must refuse without stopping."""
    good = json.loads(src.read_text())

    def mutated(fn):
        d = json.loads(json.dumps(good))
        fn(d)
        return json.dumps(d)

    yield "null accuracy", mutated(lambda d: d["rows"][0].__setitem__("accuracy", None))
    yield "list for a name", mutated(lambda d: d["rows"][0].__setitem__("variant", ["SECRET-VALUE-123"]))
    yield "secret in a value", mutated(lambda d: d["rows"][1].__setitem__("p95_ms", "SECRET-VALUE-123"))
    yield "rows not a list", mutated(lambda d: d.__setitem__("rows", {"a": 1}))
    yield "deep nesting", "[" * 200_000 + "]" * 200_000
    yield "not JSON", "SECRET-VALUE-123 {"


def test_reload_refuses_any_bad_table_and_keeps_serving(fx, tmp_path):
    table = tmp_path / "selected.json"
    shutil.copy(fx.selected_table, table)
    with DaemonProc(fx.bundle, table, profile=fx.profile) as d:
        for name, text in _bad_tables(fx.selected_table):
            bad = tmp_path / "bad.json"
            bad.write_text(text)
            s, _, doc = jcall(d, "POST", "/admin/reload", {"table": str(bad)})
            assert s == 400, (name, s, doc)
            assert "still serving" in doc["error"] and "SECRET-VALUE-123" not in doc["error"], (name, doc)
            assert jcall(d, "POST", INFER, VALID)[0] == 200
        # The same files through SIGHUP (the table path itself goes bad): the daemon never exits.
        for name, text in _bad_tables(fx.selected_table):
            table.write_text(text)
            n = d.log.count("reload failed")
            d.signal(signal.SIGHUP)
            assert _wait(lambda: d.log.count("reload failed") > n), name
            assert d.proc.poll() is None, name
            assert jcall(d, "GET", "/v2/health/ready")[0] == 200
        assert "SECRET-VALUE-123" not in d.log


def test_reload_reads_only_regular_files_of_bounded_size(fx, tmp_path):
    import os

    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    big = tmp_path / "big.json"
    with open(big, "wb") as fh:
        fh.truncate(64 << 20)  # sparse: 64 MiB of zeros
    with DaemonProc(fx.bundle, fx.selected_table, profile=fx.profile) as d:
        rss0 = _rss_mb(d.proc.pid)
        for path, word in (("/dev/zero", "regular file"), (str(fifo), "regular file"), (str(tmp_path), "regular file"),
                           (str(big), "byte cap")):
            t = time.monotonic()
            s, _, doc = jcall(d, "POST", "/admin/reload", {"table": path})
            assert s == 400 and word in doc["error"], (path, doc)
            assert time.monotonic() - t < 5
        assert _rss_mb(d.proc.pid) < rss0 + 50
        assert jcall(d, "POST", INFER, VALID)[0] == 200
        t = time.monotonic()
        d.signal(signal.SIGTERM)
        assert d.proc.wait(15) == 0 and time.monotonic() - t < 12


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as fh:
        import os

        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


def test_a_variant_first_loaded_on_reload_is_checked_against_the_manifest(fx, tmp_path):
    bundle = copy_bundle(fx, tmp_path / "bundle")
    table = tmp_path / "selected.json"
    v = list(fx.variants)
    _write_table(fx.selected_table, table, keep=[v[0], v[1]])
    with DaemonProc(bundle, table, profile=fx.profile) as d:
        # Flip one byte of the variant that is not loaded yet, then ask for it.
        m = json.loads((bundle / "manifest.json").read_text())
        aid = v[2].split("@")[0]
        rel = next(a["path"] for a in m["artifacts"] if a["artifact_id"] == aid)
        data = bytearray((bundle / rel).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (bundle / rel).write_bytes(bytes(data))
        shutil.copy(fx.selected_table, table)
        s, _, doc = jcall(d, "POST", "/admin/reload")
        assert s == 200 and doc["variants"] == [v[0], v[1]], doc
        st = {x["variant"]: x for x in jcall(d, "GET", "/v2/models/edgekit")[2]["variants"]}
        assert st[v[2]]["ready"] is False and "sha256" in st[v[2]]["reason"]
        used = {jcall(d, "POST", INFER, infer_doc(deadline=dl))[2]["parameters"]["variant"] for dl in (0.5, 10_000)}
        assert v[2] not in used

