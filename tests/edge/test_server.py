"""The real daemon (`edgekit serve` as a subprocess on loopback), exercised over HTTP only."""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.edge._fixtures import DaemonProc, copy_bundle, edge_fixture, start_daemon

H, W, C = 28, 28, 1


@pytest.fixture(scope="module")
def fx():
    return edge_fixture()


@pytest.fixture(scope="module")
def srv(fx):
    d = start_daemon()
    yield d
    d.stop()


def call(d, method: str, path: str, body: bytes | None = None, headers: dict | None = None, timeout: float = 30.0):
    """One request on a fresh connection: (status, headers (lower-case), body bytes)."""
    c = http.client.HTTPConnection(d.host, d.port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def jcall(d, method, path, doc=None, headers=None):
    body = None if doc is None else (doc if isinstance(doc, bytes) else json.dumps(doc).encode())
    s, h, b = call(d, method, path, body, headers)
    return s, h, (json.loads(b) if b else None)


def infer_doc(image: np.ndarray | None = None, deadline=50.0, dtype="UINT8", shape=None, **extra):
    img = np.zeros((1, H, W, C), np.uint8) if image is None else image
    doc = {
        "inputs": [{"name": "input", "shape": shape or [1, H, W, C], "datatype": dtype,
                    "data": img.reshape(-1).tolist()}],
        "parameters": {} if deadline is None else {"deadline_ms": deadline},
    }
    doc.update(extra)
    return doc


def binary_body(image: np.ndarray, deadline: float, binary_out: bool = True, dtype="UINT8") -> tuple[bytes, dict]:
    raw = np.ascontiguousarray(image, dtype="<u1" if dtype == "UINT8" else "<f4").tobytes()
    head = {
        "inputs": [{"name": "input", "shape": [1, H, W, C], "datatype": dtype,
                    "parameters": {"binary_data_size": len(raw)}}],
        "parameters": {"deadline_ms": deadline, "binary_data_output": binary_out},
    }
    js = json.dumps(head).encode()
    return js + raw, {"Inference-Header-Content-Length": str(len(js)), "Content-Type": "application/octet-stream"}


def host_scores(fx, variant: str, index: int) -> np.ndarray:
    """The workstation's scores for canary image ``index`` (what the daemon must reproduce)."""
    aid = variant.split("@")[0]
    with np.load(fx.bundle / "canary.npz") as z:
        return z[f"scores/{aid}"][index], z["images"][index]


INFER = "/v2/models/edgekit/infer"


# ----------------------------------------------------------------------------- startup and metadata


def test_startup_prints_memory_and_no_tensorflow(srv):
    out = "".join(srv.stdout)
    assert "resident memory with variants loaded:" in out and " MB" in out
    assert "tensorflow in sys.modules: no" in out
    assert f"listening on http://127.0.0.1:{srv.port}" in out


def test_health_and_metadata(srv, fx):
    assert jcall(srv, "GET", "/v2/health/live")[::2] == (200, {"live": True})
    assert jcall(srv, "GET", "/v2/health/ready")[::2] == (200, {"ready": True})
    s, _, doc = jcall(srv, "GET", "/v2")
    assert s == 200 and doc["name"] == "edgekit" and "binary_tensor_data" in doc["extensions"]
    s, _, doc = jcall(srv, "GET", "/v2/models/edgekit")
    assert s == 200 and doc["name"] == "edgekit" and doc["versions"] == ["1"]
    assert doc["inputs"] == [{"name": "input", "datatype": "UINT8", "shape": [-1, H, W, C]}]
    assert [o["name"] for o in doc["outputs"]] == ["logits", "class"]
    assert [v["variant"] for v in doc["variants"]] == list(fx.variants)
    assert all(v["ready"] for v in doc["variants"])
    assert jcall(srv, "GET", "/v2/models/edgekit/ready")[::2] == (200, {"name": "edgekit", "ready": True})
    assert jcall(srv, "GET", "/v2/models/edgekit/versions/1/ready")[0] == 200
    for path in ("/v2/models/resnet", "/v2/models/resnet/ready", "/v2/models/edgekit/versions/7"):
        s, _, doc = jcall(srv, "GET", path)
        assert s == 404 and "unknown" in doc["error"]
    s, h, doc = jcall(srv, "GET", INFER)
    assert s == 405 and h["allow"] == "POST"
    assert jcall(srv, "GET", "/nope")[0] == 404


# ----------------------------------------------------------------------------- inference


def test_json_infer_matches_the_host_scores(srv, fx):
    big = fx.variants[-1]
    scores, image = host_scores(fx, big, 3)
    s, h, doc = jcall(srv, "POST", INFER, infer_doc(image[None], deadline=10_000, id="req-7"))
    assert s == 200, doc
    assert h["content-type"] == "application/json"
    assert doc["model_name"] == "edgekit" and doc["id"] == "req-7"
    p = doc["parameters"]
    assert set(p) >= {"variant", "predicted_ms", "queue_ms", "inference_ms", "total_ms", "deadline_ms",
                      "deadline_met", "slowdown", "policy"}
    assert p["variant"] == big and p["deadline_met"] is True and p["policy"] == "adaptive"
    assert p["deadline_ms"] == 10_000 and p["total_ms"] >= p["inference_ms"] > 0
    logits = {o["name"]: o for o in doc["outputs"]}
    assert logits["logits"]["shape"] == [1, 10] and logits["logits"]["datatype"] == "FP32"
    np.testing.assert_allclose(logits["logits"]["data"], scores, rtol=1e-5, atol=1e-5)
    assert logits["class"] == {"name": "class", "datatype": "INT64", "shape": [1], "data": [int(np.argmax(scores))]}


def test_json_infer_variants_of_input(srv):
    img = np.arange(H * W * C).reshape(1, H, W, C) % 256
    # No batch dimension; nested data; FP32 pixel values.
    doc = infer_doc(img.astype(np.uint8), shape=[H, W, C])
    doc["inputs"][0]["data"] = img.reshape(H, W, C).tolist()
    assert jcall(srv, "POST", INFER, doc)[0] == 200
    s, _, doc32 = jcall(srv, "POST", INFER, infer_doc(img.astype(np.float32), dtype="FP32"))
    s8, _, doc8 = jcall(srv, "POST", INFER, infer_doc(img.astype(np.uint8)))
    assert s == s8 == 200
    # Only the outputs asked for.
    s, _, doc = jcall(srv, "POST", INFER, infer_doc(outputs=[{"name": "class"}]))
    assert s == 200 and [o["name"] for o in doc["outputs"]] == ["class"]
    # Without a deadline parameter object but with curl's default content type.
    s, _, _ = jcall(srv, "POST", INFER, infer_doc(), {"Content-Type": "application/x-www-form-urlencoded"})
    assert s == 200


def test_binary_infer(srv, fx):
    big = fx.variants[-1]
    scores, image = host_scores(fx, big, 5)
    body, headers = binary_body(image[None], 10_000, binary_out=True)
    s, h, data = call(srv, "POST", INFER, body, headers)
    assert s == 200
    n = int(h["inference-header-content-length"])
    head = json.loads(data[:n])
    assert h["content-type"] == "application/octet-stream"
    outs = head["outputs"]
    assert [o["name"] for o in outs] == ["logits", "class"]
    assert outs[0]["parameters"]["binary_data_size"] == 40 and "data" not in outs[0]
    assert outs[1]["parameters"]["binary_data_size"] == 8
    blob = data[n:]
    assert len(blob) == 48
    np.testing.assert_allclose(np.frombuffer(blob[:40], "<f4"), scores, rtol=1e-5, atol=1e-5)
    assert int(np.frombuffer(blob[40:], "<i8")[0]) == int(np.argmax(scores))
    assert head["parameters"]["variant"] == big

    # Binary input, JSON output (binary_data_output false), and FP32 binary input.
    body, headers = binary_body(image[None], 10_000, binary_out=False)
    s, h, data = call(srv, "POST", INFER, body, headers)
    assert s == 200 and "inference-header-content-length" not in h
    np.testing.assert_allclose(json.loads(data)["outputs"][0]["data"], scores, rtol=1e-5, atol=1e-5)
    body, headers = binary_body(image[None].astype(np.float32), 10_000, dtype="FP32")
    assert call(srv, "POST", INFER, body, headers)[0] == 200

    # A JSON request asking for one binary output.
    doc = infer_doc(image[None], deadline=10_000, outputs=[{"name": "logits", "parameters": {"binary_data": True}}])
    s, h, data = call(srv, "POST", INFER, json.dumps(doc).encode())
    n = int(h["inference-header-content-length"])
    assert s == 200 and len(data) == n + 40


def test_deadline_met_and_missed(srv, fx):
    s, _, doc = jcall(srv, "POST", INFER, infer_doc(deadline=10_000))
    assert s == 200 and doc["parameters"]["deadline_met"] is True
    assert doc["parameters"]["variant"] == fx.variants[-1]
    # 1 microsecond: nothing fits; best-effort runs the fastest and flags the miss.
    s, _, doc = jcall(srv, "POST", INFER, infer_doc(deadline=0.001))
    assert s == 200
    p = doc["parameters"]
    assert p["deadline_met"] is False and p["variant"] == fx.variants[0]
    assert p["total_ms"] > p["deadline_ms"]


def test_keep_alive_survives_errors(srv):
    c = http.client.HTTPConnection(srv.host, srv.port, timeout=30)
    try:
        for body, want in [(infer_doc(), 200), (b"{bad json", 400), (infer_doc(deadline=-1), 400), (infer_doc(), 200)]:
            c.request("POST", INFER, body=body if isinstance(body, bytes) else json.dumps(body).encode())
            r = c.getresponse()
            r.read()
            assert r.status == want
    finally:
        c.close()


# ----------------------------------------------------------------------------- malformed requests

VALID = infer_doc()


def _mut(f):
    d = json.loads(json.dumps(VALID))
    f(d)
    return json.dumps(d).encode()


MALFORMED = {
    "bad json": (b'{"inputs": [', 400, "not valid JSON"),
    "not an object": (b"[1, 2]", 400, "JSON object"),
    "empty body": (b"", 400, "empty body"),
    "not utf8": (b"\xff\xfe\x00", 400, "UTF-8"),
    "NaN literal": (json.dumps(VALID).replace('"data": [0', '"data": [NaN').encode(), 400, "NaN"),
    "overflow to inf in FP32": (_mut(lambda d: d["inputs"][0].update(datatype="FP32")).replace(b"[0,", b"[1e999,", 1)
                                .replace(b"[0, ", b"[1e999, ", 1), 400, "NaN or infinite"),
    "missing deadline": (_mut(lambda d: d.update(parameters={})), 400, "missing parameters.deadline_ms"),
    "negative deadline": (_mut(lambda d: d["parameters"].update(deadline_ms=-5)), 400, "> 0"),
    "zero deadline": (_mut(lambda d: d["parameters"].update(deadline_ms=0)), 400, "> 0"),
    "string deadline": (_mut(lambda d: d["parameters"].update(deadline_ms="10")), 400, "must be a number"),
    "bool deadline": (_mut(lambda d: d["parameters"].update(deadline_ms=True)), 400, "must be a number"),
    "huge deadline": (_mut(lambda d: d["parameters"].update(deadline_ms=1e12)), 400, "relative"),
    "parameters not object": (_mut(lambda d: d.update(parameters=[1])), 400, "'parameters' must be an object"),
    "no inputs": (_mut(lambda d: d.pop("inputs")), 400, "'inputs'"),
    "two inputs": (_mut(lambda d: d["inputs"].append(d["inputs"][0])), 400, "exactly one input"),
    "wrong input name": (_mut(lambda d: d["inputs"][0].update(name="x")), 400, "unknown input"),
    "wrong dtype": (_mut(lambda d: d["inputs"][0].update(datatype="INT32")), 400, "datatype"),
    "wrong shape": (_mut(lambda d: d["inputs"][0].update(shape=[1, 32, 32, 3])), 400, "does not match"),
    "batch of 2": (_mut(lambda d: d["inputs"][0].update(shape=[2, H, W, C])), 400, "batch size must be 1"),
    "shape not ints": (_mut(lambda d: d["inputs"][0].update(shape=["a"])), 400, "list of integers"),
    "too few values": (_mut(lambda d: d["inputs"][0].update(data=[1, 2, 3])), 400, "has 3 values"),
    "string values": (_mut(lambda d: d["inputs"][0].update(data=["x"] * (H * W * C))), 400, "only numbers"),
    "ragged": (_mut(lambda d: d["inputs"][0].update(data=[[1, 2], [3]])), 400, "ragged"),
    "uint8 out of range": (_mut(lambda d: d["inputs"][0]["data"].__setitem__(0, 300)), 400, "0..255"),
    "uint8 fraction": (_mut(lambda d: d["inputs"][0]["data"].__setitem__(0, 1.5)), 400, "integers"),
    "fp32 out of range": (_mut(lambda d: d["inputs"][0].update(datatype="FP32", data=[-1.0] * (H * W * C))), 400, "0..255"),
    "no data": (_mut(lambda d: d["inputs"][0].pop("data")), 400, "no 'data'"),
    "unknown output": (_mut(lambda d: d.update(outputs=[{"name": "probs"}])), 400, "unknown output"),
    "id not string": (_mut(lambda d: d.update(id=5)), 400, "'id' must be a string"),
    "deep nesting": (b"[" * 100_000 + b"]" * 100_000, 400, ""),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_requests_get_4xx_with_a_message(srv, name):
    body, status, words = MALFORMED[name]
    s, _, data = call(srv, "POST", INFER, body, {"Content-Type": "application/json"})
    doc = json.loads(data)
    assert s == status, doc
    assert doc["error"] and words in doc["error"]


def test_malformed_binary_requests(srv):
    img = np.zeros((1, H, W, C), np.uint8)
    body, headers = binary_body(img, 50)
    cases = [
        (body, dict(headers, **{"Inference-Header-Content-Length": "abc"}), "must be an integer"),
        (body, dict(headers, **{"Inference-Header-Content-Length": str(len(body) + 5)}), "outside the body"),
        (body[:-10], headers, "bytes after the JSON header"),
        (body + b"xx", headers, "bytes after the JSON header"),
        (body[: int(headers["Inference-Header-Content-Length"])] + b"", headers, "binary_data_size says"),
        (body, {"Content-Type": "application/json"}, "not valid JSON"),
    ]
    head = json.loads(body[: int(headers["Inference-Header-Content-Length"])])
    head["inputs"][0]["parameters"]["binary_data_size"] = 10
    js = json.dumps(head).encode()
    cases.append((js + b"x" * 10, {"Inference-Header-Content-Length": str(len(js))}, "is 784 bytes"))
    for b, h, words in cases:
        s, _, data = call(srv, "POST", INFER, b, h)
        assert s == 400, (words, data)
        assert words in json.loads(data)["error"]
    # FP32 NaN through the binary path.
    nan = np.full((1, H, W, C), np.nan, np.float32)
    b, h = binary_body(nan, 50, dtype="FP32")
    s, _, data = call(srv, "POST", INFER, b, h)
    assert s == 400 and "NaN" in json.loads(data)["error"]


def test_protocol_errors(srv):
    # Unknown model, unsupported encoding, no Content-Length, chunked, method not allowed.
    s, _, doc = jcall(srv, "POST", "/v2/models/other/infer", VALID)
    assert s == 404 and "unknown model 'other'" in doc["error"]
    s, _, doc = jcall(srv, "POST", INFER, VALID, {"Content-Encoding": "gzip"})
    assert s == 415 and "Content-Encoding" in doc["error"]
    c = http.client.HTTPConnection(srv.host, srv.port, timeout=10)
    c.putrequest("POST", INFER)
    c.putheader("Transfer-Encoding", "chunked")
    c.endheaders()
    c.send(b"5\r\nhello\r\n0\r\n\r\n")
    r = c.getresponse()
    assert r.status == 411 and "Content-Length" in json.loads(r.read())["error"]
    c.close()
    s, _, doc = jcall(srv, "DELETE", "/v2/health/live")
    assert s == 405
    s, _, doc = jcall(srv, "BREW", "/v2")
    assert s == 405 and "BREW" in doc["error"]
    s, h, body = call(srv, "HEAD", "/v2/health/ready")
    assert s == 200 and body == b"" and int(h["content-length"]) > 0


def test_oversize_body_gets_413_and_the_daemon_keeps_serving(srv):
    body = b"{" + b" " * (9 * 1024 * 1024) + b"}"
    s, h, data = call(srv, "POST", INFER, body)
    assert s == 413 and "at most" in json.loads(data)["error"]
    assert h.get("connection") == "close"
    assert jcall(srv, "POST", INFER, VALID)[0] == 200


def test_metrics(srv):
    jcall(srv, "POST", INFER, VALID)
    jcall(srv, "POST", INFER, b"{bad")
    s, h, data = call(srv, "GET", "/metrics")
    text = data.decode()
    assert s == 200 and h["content-type"].startswith("text/plain; version=0.0.4")
    for name in ("edgekit_requests_total{outcome=\"met\"}", "edgekit_requests_total{outcome=\"invalid\"}",
                 "edgekit_deadline_misses_total", "edgekit_variant_requests_total{variant=",
                 "edgekit_queue_depth", "edgekit_slowdown_factor", "edgekit_request_duration_seconds_bucket{le=\"+Inf\"}",
                 "edgekit_inference_duration_seconds_count{variant=", "edgekit_queue_wait_seconds_sum",
                 "edgekit_variant_ready{variant="):
        assert name in text, name
    for line in text.splitlines():
        assert line.startswith("#") or len(line.rsplit(" ", 1)) == 2


# ----------------------------------------------------------------------------- fuzzing

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=20,
)
_keys = st.sampled_from(["inputs", "parameters", "outputs", "id", "deadline_ms", "name", "shape", "datatype", "data",
                         "binary_data_size", "binary_data_output", "binary_data"])


@st.composite
def mutated_requests(draw):
    d = json.loads(json.dumps(VALID))
    target = draw(st.sampled_from(["top", "param", "input", "input_param"]))
    obj = {"top": d, "param": d["parameters"], "input": d["inputs"][0]}.get(target)
    if obj is None:
        obj = d["inputs"][0].setdefault("parameters", {})
    for _ in range(draw(st.integers(1, 3))):
        key = draw(_keys)
        if draw(st.booleans()):
            obj[key] = draw(_json_values)
        else:
            obj.pop(key, None)
    return json.dumps(d).encode(), {}


@st.composite
def bodies(draw):
    kind = draw(st.sampled_from(["bytes", "json", "mutated", "binary"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300)), {}
    if kind == "json":
        return json.dumps(draw(_json_values)).encode(), {}
    if kind == "mutated":
        return draw(mutated_requests())
    body, headers = binary_body(np.zeros((1, H, W, C), np.uint8), 50)
    cut = draw(st.integers(0, len(body)))
    hl = draw(st.one_of(st.just(headers["Inference-Header-Content-Length"]), st.integers(-5, 2000).map(str),
                        st.text(max_size=5)))
    hl = "".join(ch for ch in hl if 32 < ord(ch) < 127) or "0"
    return body[:cut], {"Inference-Header-Content-Length": hl}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(bodies())
def test_fuzz_no_5xx(srv, case):
    body, headers = case
    s, _, data = call(srv, "POST", INFER, body, headers)
    assert s < 500, data[:300]
    if s >= 400:
        assert json.loads(data)["error"]


def test_still_alive_after_fuzzing(srv):
    assert srv.proc.poll() is None
    assert jcall(srv, "POST", INFER, VALID)[0] == 200


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
    from edge.atomic import sha256_file

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
