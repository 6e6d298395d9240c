"""The daemon process (edge/serve/command.py): policies, EDF and the queue, reload, canary, auth, shutdown, the Triton client."""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.edge._daemon_http import (
    INFER,
    VALID,
    C,
    H,
    W,
    call,
    host_scores,
    infer_doc,
    jcall,
)
from tests.edge._fixtures import DaemonProc, copy_bundle, start_daemon

# ----------------------------------------------------------------------------- policies, queue, EDF


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


# ----------------------------------------------------------------------------- reload


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


def test_sighup_with_a_bad_table_keeps_serving(fx, tmp_path):
    table = tmp_path / "selected.json"
    shutil.copy(fx.selected_table, table)
    with DaemonProc(fx.bundle, table, profile=fx.profile) as d:
        table.write_text("{ not json")
        d.signal(signal.SIGHUP)
        assert _wait(lambda: "reload failed" in d.log)
        assert jcall(d, "GET", "/v2/health/ready")[0] == 200
        assert jcall(d, "POST", INFER, VALID)[0] == 200
        _write_table(fx.selected_table, table, keep=[fx.variants[0]])
        d.signal(signal.SIGHUP)
        assert _wait(lambda: "reloaded" in d.log)
        assert jcall(d, "POST", INFER, infer_doc(deadline=10_000))[2]["parameters"]["variant"] == fx.variants[0]


# ----------------------------------------------------------------------------- canary, auth, shutdown


def _corrupt_canary(fx, dest: Path, artifact: str) -> Path:
    """A copy of the bundle whose canary scores for ``artifact`` are wrong (checksums updated)."""
    from edge.core.atomic import sha256_file

    shutil.copytree(fx.bundle, dest)
    with np.load(dest / "canary.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays[f"scores/{artifact}"] = arrays[f"scores/{artifact}"] + np.linspace(-5, 5, 10, dtype=np.float32)
    np.savez(dest / "canary.npz", **arrays)
    m = json.loads((dest / "manifest.json").read_text())
    m["extra"]["files"]["canary.npz"] = sha256_file(dest / "canary.npz")
    (dest / "manifest.json").write_text(json.dumps(m))
    return dest


def test_canary_failure_excludes_the_variant(fx, tmp_path):
    mid = fx.variants[1]
    bundle = _corrupt_canary(fx, tmp_path / "bundle", mid.split("@")[0])
    with DaemonProc(bundle, fx.selected_table, profile=fx.profile) as d:
        assert f"variant {mid} is NOT ready" in d.log and "canary FAILED" in d.log
        s, _, doc = jcall(d, "GET", "/v2/models/edgekit")
        status = {x["variant"]: x for x in doc["variants"]}
        assert status[mid]["ready"] is False and "canary" in status[mid]["reason"]
        assert status[fx.variants[0]]["ready"] and status[fx.variants[-1]]["ready"]
        assert jcall(d, "GET", "/v2/health/ready")[0] == 200
        used = {jcall(d, "POST", INFER, infer_doc(deadline=dl))[2]["parameters"]["variant"] for dl in (0.001, 0.5, 5, 10_000)}
        assert mid not in used
        assert 'edgekit_variant_ready{variant="%s"} 0' % mid in call(d, "GET", "/metrics")[2].decode()


def test_all_variants_failing_the_canary_stops_the_daemon(fx, tmp_path):
    bundle = _corrupt_canary(fx, tmp_path / "bundle", fx.variants[0].split("@")[0])
    table = tmp_path / "sel.json"
    _write_table(fx.selected_table, table, keep=[fx.variants[0]])
    with pytest.raises(RuntimeError, match="rc=2") as e:
        DaemonProc(bundle, table, profile=fx.profile)
    assert "passed its canary check" in str(e.value)


def test_bearer_token(fx):
    with start_daemon("--token", "s3cret") as d:
        assert jcall(d, "GET", "/v2/health/live")[0] == 200
        assert jcall(d, "GET", "/v2/health/ready")[0] == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            s, h, doc = jcall(d, "POST", INFER, VALID, headers)
            assert s == 401 and "bearer token" in doc["error"] and h["www-authenticate"].startswith("Bearer")
            assert jcall(d, "GET", "/metrics", headers=headers)[0] == 401
            assert jcall(d, "GET", "/v2/models/edgekit", headers=headers)[0] == 401
            assert jcall(d, "POST", "/admin/reload", headers=headers)[0] == 401
        ok = {"Authorization": "Bearer s3cret"}
        assert jcall(d, "POST", INFER, VALID, ok)[0] == 200
        assert call(d, "GET", "/metrics", headers=ok)[0] == 200


def test_graceful_shutdown_finishes_queued_work_and_token_from_env(fx):
    d = start_daemon("--inject-delay-ms", "200", env={"EDGEKIT_TOKEN": "envtok"})
    try:
        assert jcall(d, "GET", "/v2/models/edgekit")[0] == 401
        out: dict = {}
        hdr = {"Authorization": "Bearer envtok"}

        def go(k):
            out[k] = call(d, "POST", INFER, json.dumps(infer_doc(deadline=10_000)).encode(), hdr)
        threads = [threading.Thread(target=go, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.1)
        d.signal(signal.SIGTERM)
        for t in threads:
            t.join(30)
        assert [out[k][0] for k in range(3)] == [200, 200, 200]
        assert d.proc.wait(20) == 0
        assert "finishing queued work" in d.log and "met=3" in d.log
    finally:
        d.stop()


# ----------------------------------------------------------------------------- reload that cannot hurt


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


def test_token_from_a_file_does_not_show_in_ps(fx, tmp_path):
    tok = tmp_path / "token"
    tok.write_text("file-token-42\n")
    with start_daemon("--token-file", str(tok)) as d:
        with open(f"/proc/{d.proc.pid}/cmdline", "rb") as fh:
            assert b"file-token-42" not in fh.read()
        assert jcall(d, "GET", "/v2/models/edgekit")[0] == 401
        assert jcall(d, "GET", "/v2/models/edgekit", headers={"Authorization": "Bearer file-token-42"})[0] == 200
    with pytest.raises(RuntimeError, match="token-file"):
        start_daemon("--token-file", str(tmp_path / "missing"))


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


def test_the_standard_triton_v2_client_works(srv, fx):
    """NVIDIA's tritonclient (what most v2 users have) against the daemon: health, metadata, and
    inference with binary and JSON tensors, the deadline as a request parameter."""
    httpclient = pytest.importorskip("tritonclient.http")
    c = httpclient.InferenceServerClient(url=f"{srv.host}:{srv.port}")
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("edgekit")
    assert c.get_model_metadata("edgekit")["inputs"][0]["shape"] == [-1, H, W, C]
    want, img = host_scores(fx, fx.variants[-1], 0)
    for binary in (True, False):
        inp = httpclient.InferInput("input", [1, H, W, C], "UINT8")
        inp.set_data_from_numpy(img[None].astype(np.uint8), binary_data=binary)
        outs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("class", "logits")]
        r = c.infer("edgekit", [inp], outputs=outs, parameters={"deadline_ms": 10_000.0})
        assert r.get_response()["parameters"]["variant"] == fx.variants[-1]
        np.testing.assert_allclose(r.as_numpy("logits")[0], want, atol=1e-3)
        assert int(r.as_numpy("class")[0]) == int(np.argmax(want))
    c.close()
