"""The daemon's routes (edge/serve/app.py): the route table, then over HTTP: metadata, inference, malformed requests,
fuzzing, the bearer token and a standard v2 client."""

from __future__ import annotations

import http.client
import json
from urllib.parse import unquote

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.serve.app import RouteTable
from edge.v2.errors import ProtocolError
from tests._bundle_builder import CLASS_NAMES
from tests.edge._daemon_http import (
    INFER,
    VALID,
    C,
    H,
    W,
    binary_body,
    call,
    host_scores,
    infer_doc,
    jcall,
)
from tests.edge._fixtures import start_daemon

# ----------------------------------------------------------------------------- the route table


def _table(calls: list):
    def handler(tag):
        return lambda conn, req, **params: calls.append((tag, params))
    return RouteTable([("GET", "/v2/health/live", handler("live")), ("POST", "/admin/reload", handler("reload")),
                       ("GET", "/v2/models/{name}", handler("meta")), ("POST", "/v2/models/{name}/infer",
                                                                           handler("infer")),
                       ("DELETE", "/v2/models/{name}", handler("unload"))])


def test_the_route_table_matches_captures_and_refuses():
    calls: list = []
    t = _table(calls)
    for method, path in (("GET", "/v2/health/live"), ("HEAD", "/v2/health/live"), ("GET", "/v2/models/m%2Fx"),
                         ("POST", "/v2/models/edgekit/infer"), ("DELETE", "/v2/models/a")):
        h, params = t.resolve(method, [unquote(x) for x in path.split("/") if x], path)
        h(None, None, **params)
    assert calls == [("live", {}), ("live", {}), ("meta", {"name": "m/x"}), ("infer", {"name": "edgekit"}),
                     ("unload", {"name": "a"})]
    with pytest.raises(ProtocolError) as e:
        t.resolve("POST", ["v2", "health", "live"], "/v2/health/live")
    assert (e.value.status, e.value.message, e.value.headers) == (405, "POST is not allowed here; use GET",
                                                                   {"Allow": "GET"})
    with pytest.raises(ProtocolError) as e:
        t.resolve("PUT", ["v2", "models", "a"], "/v2/models/a")
    assert e.value.status == 405 and e.value.headers == {"Allow": "GET, DELETE"}
    with pytest.raises(ProtocolError) as e:
        t.resolve("GET", ["v2", "models", "a", "b"], "/v2/models/a/b?x=1")
    assert (e.value.status, e.value.message) == (404, "no such endpoint: GET /v2/models/a/b?x=1")
    with pytest.raises(ProtocolError) as e:
        t.resolve("HEAD", ["admin", "reload"], "/admin/reload")
    assert e.value.status == 405  # HEAD answers only where GET does


# ----------------------------------------------------------------------------- metadata


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


def test_versioned_and_repository_routes(srv):
    s, _, doc = jcall(srv, "POST", "/v2/models/edgekit/versions/1/infer", VALID)
    assert s == 200 and doc["model_version"] == "1"
    assert jcall(srv, "GET", "/v2/models/edgekit/versions/1")[2]["name"] == "edgekit"
    s, _, doc = jcall(srv, "POST", "/v2/models/edgekit/versions/2/infer", VALID)
    assert s == 404 and doc["error"] == "unknown version '2' of model 'edgekit'; available: ['1']"
    s, _, doc = jcall(srv, "GET", "/v2/models/edgekit/versions/1/nope")
    assert s == 404 and doc["error"].startswith("no such endpoint: GET")
    s, _, doc = jcall(srv, "POST", "/v2/repository/index")
    assert s == 200 and doc == [{"name": "edgekit", "version": "1", "state": "READY", "reason": ""}]
    s, h, doc = jcall(srv, "GET", "/v2/repository/index")
    assert s == 405 and h["allow"] == "POST" and doc["error"] == "GET is not allowed here; use POST"
    s, _, doc = jcall(srv, "POST", "/v2/repository/models/other/load")
    assert s == 404 and "unknown model 'other'" in doc["error"]
    s, h, body = call(srv, "HEAD", "/metrics")
    assert s == 200 and body == b"" and h["content-type"].startswith("text/plain")


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



# The codec's malformed-request table (tests/edge/v2/test_codec.py), here sent over HTTP.
from tests.edge.v2.test_codec import MALFORMED, mutate_keys  # noqa: E402


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
    assert "edgekit_buffered_request_bytes " in text and "edgekit_open_connections " in text


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
    mutate_keys(draw, obj, _keys, _json_values)
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


# ----------------------------------------------------------------------------- auth, and a standard client


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
        # The class name rides beside the label as a response parameter, which any v2 client can read.
        assert r.get_response()["parameters"]["class_name"] == CLASS_NAMES[int(np.argmax(want))]
    assert c.get_model_metadata("edgekit")["parameters"]["labels"] == list(CLASS_NAMES)
    c.close()



def test_the_daemon_serves_a_36x36_variant_from_28x28_requests(resolution_run, tmp_path):
    """v2 metadata names the bundle's image size; a request at it is resized for the chosen variant and answers what
    the workstation's canary computed; a request at the variant's own size is a 400 that names the shape served."""
    from edgekit.cli import main
    from tests.edge._fixtures import DaemonProc

    run = resolution_run
    selected = tmp_path / "sel36.json"
    assert main(["select", str(run["table"]), "--profile", str(run["profile"]), "--significance", "0",
                 "--models", "*-r36", "--out", str(selected)]) == 0
    with np.load(run["bundle"] / "canary.npz") as z:
        image = z["images"][0]
        host = {k.split("/", 1)[1]: z[k][0] for k in z.files if k.startswith("scores/")}
    d = DaemonProc(run["bundle"], selected, profile=run["profile"])
    try:
        s, _, meta = jcall(d, "GET", "/v2/models/edgekit")
        assert s == 200 and meta["inputs"][0]["shape"] == [-1, 28, 28, 1]
        s, _, out = jcall(d, "POST", INFER, infer_doc(image[None], deadline=10_000))
        assert s == 200, out
        variant = out["parameters"]["variant"]
        assert "-r36." in variant
        np.testing.assert_allclose(out["outputs"][0]["data"], host[variant.split("@")[0]], atol=1e-4)
        s, _, err = jcall(d, "POST", INFER, infer_doc(np.zeros((1, 36, 36, 1), np.uint8), shape=[1, 36, 36, 1]))
        assert s == 400 and "[1, 28, 28, 1]" in err["error"], err
    finally:
        d.stop()
