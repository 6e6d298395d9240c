"""The v2 codec in-process: request and response round trips (JSON and binary), validation errors, fuzzing.

edge.v2.codec is the daemon's side (check requests, encode answers), edge.v2.client_codec the client's.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.v2 import codec as P
from edge.v2.client_codec import (
    Classification,
    ClientError,
    RequestEncoder,
    decode_infer_response,
    encode_infer_request,
    summarize_infer_response,
)
from edge.v2.codec import (
    InferRequest,
    encode_infer_response,
    loads_json,
    parse_infer_request,
)
from edge.v2.errors import ProtocolError, encode_error

H, W, C = 28, 28, 1
HWC = (H, W, C)
HL = "Inference-Header-Content-Length"


def parse(body, headers=None, hwc=HWC, default=None) -> InferRequest:
    return parse_infer_request(body, (headers or {}).get(HL), hwc, default)


def lower(headers: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def image(dtype=np.uint8, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, HWC).astype(dtype)


def infer_doc(img: np.ndarray | None = None, deadline=50.0, dtype="UINT8", shape=None, **extra) -> dict:
    img = np.zeros((1, *HWC), np.uint8) if img is None else img
    doc = {
        "inputs": [{"name": "input", "shape": shape or [1, *HWC], "datatype": dtype, "data": img.reshape(-1).tolist()}],
        "parameters": {} if deadline is None else {"deadline_ms": deadline},
    }
    doc.update(extra)
    return doc


# ----------------------------------------------------------------------------- request round trips


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_request_round_trip(binary, dtype):
    img = image(dtype)
    body, headers = encode_infer_request(img, 12.5, request_id="r-1", binary=binary)
    assert (HL in headers) == binary
    assert headers["Content-Type"] == ("application/octet-stream" if binary else "application/json")
    req = parse(body, headers)
    assert isinstance(req, InferRequest)
    assert req.image.shape == (1, *HWC) and req.image.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(req.image[0], img)
    assert req.deadline_ms == 12.5 and req.request_id == "r-1"
    # The binary client asks for binary outputs; the JSON one for JSON outputs.
    assert req.outputs == (("logits", binary), ("class", binary))
    with pytest.raises(AttributeError):
        req.deadline_ms = 1.0  # type: ignore[misc]


def test_request_variants():
    img = image()
    # A batch-of-one array, a memoryview body, no id, the default deadline.
    body, headers = encode_infer_request(img[None], 3, binary=True)
    req = parse(memoryview(body), headers)
    assert req.request_id is None and req.deadline_ms == 3.0
    np.testing.assert_array_equal(req.image[0], img)
    doc = infer_doc(img[None], deadline=None, shape=list(HWC))
    doc["inputs"][0]["data"] = img.tolist()  # nested data, no batch dimension
    req = parse(json.dumps(doc).encode(), default=40.0)
    assert req.deadline_ms == 40.0
    np.testing.assert_array_equal(req.image[0], img)
    # Only the outputs asked for, each with its own binary flag; an empty list means all.
    doc = infer_doc(outputs=[{"name": "class"}, {"name": "logits", "parameters": {"binary_data": True}}])
    assert parse(json.dumps(doc).encode()).outputs == (("class", False), ("logits", True))
    assert parse(json.dumps(infer_doc(outputs=[])).encode()).outputs == (("logits", False), ("class", False))
    with pytest.raises(ValueError, match="one image"):
        encode_infer_request(np.zeros((2, *HWC), np.uint8), 10)


def test_request_encoder_bodies_parse():
    images = np.stack([image(seed=s) for s in range(3)])
    idx = np.asarray([2, 0, 2])
    for binary in (False, True):
        enc = RequestEncoder(images, idx, binary=binary)
        body, headers = enc.request(2, 7.25, 41)
        req = parse(body, headers)
        np.testing.assert_array_equal(req.image[0], images[2])
        assert req.deadline_ms == 7.25 and req.request_id == "41"
        assert req.outputs == (("logits", binary), ("class", binary))
        assert enc.body(0, 1.0, 1) == enc.request(0, 1.0, 1)[0]
    with pytest.raises(ValueError, match="uint8"):
        RequestEncoder(images.astype(np.float32), idx)


# ----------------------------------------------------------------------------- response round trips


@pytest.mark.parametrize("binary", [True, False])
def test_response_round_trip(binary):
    scores = np.linspace(-1, 1, 10, dtype=np.float32)[None]
    params = {"variant": "v@cpu", "predicted_ms": 1.5, "queue_ms": 0.25, "inference_ms": 1.0, "total_ms": 2.0,
              "deadline_ms": 5.0, "deadline_met": True, "slowdown": 1.1, "policy": "adaptive"}
    outputs = (("logits", binary), ("class", binary))
    data, headers = encode_infer_response(7, scores, outputs, "edgekit", "id-3", params)
    if binary:
        assert headers["Content-Type"] == "application/octet-stream"
        n = int(headers[HL])
        assert len(data) == n + 40 + 8
        head = json.loads(data[:n])
    else:
        assert headers == {"Content-Type": "application/json"}
        head = json.loads(data)
        assert head["outputs"][1] == {"name": "class", "datatype": "INT64", "shape": [1], "data": [7]}
    assert head["model_name"] == "edgekit" and head["model_version"] == P.MODEL_VERSION and head["id"] == "id-3"
    assert head["outputs"][0]["shape"] == [1, 10] and head["outputs"][0]["datatype"] == "FP32"
    r = decode_infer_response(200, lower(headers), data)
    assert isinstance(r, Classification) and r.ok and r.label == 7
    np.testing.assert_array_equal(r.scores, scores[0])
    assert r.variant == "v@cpu" and r.deadline_met is True and r.policy == "adaptive"
    assert (r.predicted_ms, r.queue_ms, r.inference_ms, r.total_ms, r.slowdown) == (1.5, 0.25, 1.0, 2.0, 1.1)
    s = summarize_infer_response(200, data, lower(headers))
    assert s == {"pred": 7, "params": params, "error": ""}


def test_response_subsets_and_mixed_outputs():
    scores = np.asarray([[0.1, 0.9, 0.3]], np.float32)
    # Logits only (binary): the label is their argmax; class only (JSON): no scores.
    data, headers = encode_infer_response(1, scores, [("logits", True)], "m", None, {})
    assert "id" not in json.loads(data[: int(headers[HL])])
    r = decode_infer_response(200, lower(headers), data)
    assert r.label == 1 and r.scores.shape == (3,)
    assert summarize_infer_response(200, data, lower(headers))["pred"] == 1
    data, headers = encode_infer_response(2, scores, [("class", False)], "m", None, {})
    r = decode_infer_response(200, lower(headers), data)
    assert r.label == 2 and r.scores.size == 0
    # Logits as JSON, class as binary.
    data, headers = encode_infer_response(0, scores, [("logits", False), ("class", True)], "m", None, {})
    assert len(data) == int(headers[HL]) + 8
    assert decode_infer_response(200, lower(headers), data).label == 0
    assert summarize_infer_response(200, data, lower(headers))["pred"] == 0
    # No scores at all (a result without them).
    data, headers = encode_infer_response(4, None, [("logits", False), ("class", False)], "m", None, {})
    assert json.loads(data)["outputs"][0]["shape"] == [1, 0]


def test_error_bodies_decode():
    assert json.loads(encode_error("bad")) == {"error": "bad"}
    params = {"predicted_ms": 3.0, "deadline_met": False}
    body = encode_error("deadline cannot be met", {"parameters": params})
    assert json.loads(body) == {"parameters": params, "error": "deadline cannot be met"}
    assert json.loads(encode_error("x", {"error": "kept"})) == {"error": "kept"}
    r = decode_infer_response(408, {}, body)
    assert r.status == 408 and not r.ok and r.label == -1 and r.predicted_ms == 3.0
    assert r.error == "deadline cannot be met" and r.scores.size == 0
    s = summarize_infer_response(408, body)
    assert s == {"pred": -1, "params": params, "error": "deadline cannot be met"}
    with pytest.raises(ClientError) as e:
        decode_infer_response(400, {}, encode_error("nope"))
    assert e.value.status == 400 and e.value.message == "nope"
    with pytest.raises(ClientError, match="not JSON"):
        decode_infer_response(200, {}, b"<html>")
    assert "not JSON" in summarize_infer_response(502, b"<html>")["error"]
    assert "not a JSON object" in summarize_infer_response(200, b"[1]")["error"]
    assert "neither" in summarize_infer_response(200, b'{"outputs": [5, {"name": "class", "data": []}]}')["error"]


def test_client_builds_on_the_codec_without_reexporting_it():
    from benchmarks.evaluate import loadgen
    from edge.v2 import client

    # 0.1.0 had no users to keep: the codec's names are imported from edge.v2.client_codec only.
    assert client.__all__ == ["Client", "ClientConnection"]
    for old in ("decode_response", "Classification", "ClientError", "split_binary", "output_arrays"):
        assert not hasattr(client, old), old
    assert loadgen.RequestEncoder is RequestEncoder and loadgen.parse_response is summarize_infer_response
    body, headers = client.Client("http://127.0.0.1:9", binary=False).encode(image(), 5, "a")
    assert (body, headers) == encode_infer_request(image(), 5, "a", binary=False)


# ----------------------------------------------------------------------------- validation


def _mut(f) -> bytes:
    d = infer_doc()
    f(d)
    return json.dumps(d).encode()


MALFORMED = {
    "bad json": (b'{"inputs": [', 400, "not valid JSON"),
    "not an object": (b"[1, 2]", 400, "JSON object"),
    "empty body": (b"", 400, "empty body"),
    "not utf8": (b"\xff\xfe\x00", 400, "UTF-8"),
    "NaN literal": (json.dumps(infer_doc()).replace('"data": [0', '"data": [NaN').encode(), 400, "NaN"),
    "overflow to inf in FP32": (_mut(lambda d: d["inputs"][0].update(datatype="FP32")).replace(b"[0, ", b"[1e999, ", 1),
                                400, "NaN or infinite"),
    "missing deadline": (_mut(lambda d: d.update(parameters={})), 400, "missing parameters.deadline_ms"),
    "negative deadline": (_mut(lambda d: d["parameters"].update(deadline_ms=-5)), 400, "> 0"),
    "zero deadline": (_mut(lambda d: d["parameters"].update(deadline_ms=0)), 400, "> 0"),
    "string deadline": (_mut(lambda d: d["parameters"].update(deadline_ms="10")), 400, "must be a number"),
    "bool deadline": (_mut(lambda d: d["parameters"].update(deadline_ms=True)), 400, "must be a number"),
    "huge deadline": (_mut(lambda d: d["parameters"].update(deadline_ms=1e12)), 400, "relative"),
    "integer deadline beyond float": (_mut(lambda d: d["parameters"].update(deadline_ms=10**400)), 400, "finite"),
    "parameters not object": (_mut(lambda d: d.update(parameters=[1])), 400, "'parameters' must be an object"),
    "binary_data_output not bool": (_mut(lambda d: d["parameters"].update(binary_data_output=1)), 400, "true or false"),
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
    "data not a list": (_mut(lambda d: d["inputs"][0].update(data="abc")), 400, "list of numbers"),
    "uint8 out of range": (_mut(lambda d: d["inputs"][0]["data"].__setitem__(0, 300)), 400, "0..255"),
    "uint8 fraction": (_mut(lambda d: d["inputs"][0]["data"].__setitem__(0, 1.5)), 400, "integers"),
    "fp32 out of range": (_mut(lambda d: d["inputs"][0].update(datatype="FP32", data=[-1.0] * (H * W * C))), 400,
                          "0..255"),
    "no data": (_mut(lambda d: d["inputs"][0].pop("data")), 400, "no 'data'"),
    "binary size without header": (_mut(lambda d: d["inputs"][0].update(parameters={"binary_data_size": 784})), 400,
                                   "no Inference-Header-Content-Length"),
    "unknown output": (_mut(lambda d: d.update(outputs=[{"name": "probs"}])), 400, "unknown output"),
    "outputs not a list": (_mut(lambda d: d.update(outputs={"name": "class"})), 400, "'outputs' must be a list"),
    "classification extension": (_mut(lambda d: d.update(outputs=[{"name": "class", "parameters": {"classification": 3}}])),
                                 400, "classification extension"),
    "id not string": (_mut(lambda d: d.update(id=5)), 400, "'id' must be a string"),
    "integer of 400 digits": (_mut(lambda d: d["inputs"][0]["data"].__setitem__(0, 10**399)), 400,
                              "an integer of 400 digits, out of range for its datatype UINT8"),
    "deep nesting": (b"[" * 100_000 + b"]" * 100_000, 400, ""),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_requests(name):
    body, status, words = MALFORMED[name]
    with pytest.raises(ProtocolError) as e:
        parse(body)
    assert e.value.status == status and words in e.value.message, e.value.message
    assert e.value.headers == {} and e.value.body is None


def test_malformed_binary_requests():
    img = np.zeros((1, *HWC), np.uint8)
    body, headers = encode_infer_request(img, 50, binary=True)
    n = int(headers[HL])
    head = json.loads(body[:n])
    head["inputs"][0]["parameters"]["binary_data_size"] = 10
    js = json.dumps(head).encode()
    both = json.loads(body[:n])
    both["inputs"][0]["data"] = [0] * 784
    both_js = json.dumps(both).encode()
    cases = [
        (body, "abc", 400, "must be an integer"),
        (body, str(len(body) + 5), 400, "outside the body"),
        (body, "-1", 400, "outside the body"),
        (body[:-10], str(n), 400, "bytes after the JSON header"),
        (body + b"xx", str(n), 400, "bytes after the JSON header"),
        (body[:n], str(n), 400, "binary_data_size says"),
        (js + b"x" * 10, str(len(js)), 400, "is 784 bytes"),
        (both_js + body[n:], str(len(both_js)), 400, "both 'data' and binary_data_size"),
        (json.dumps(infer_doc()).encode() + b"zz", str(len(json.dumps(infer_doc()))), 400, "no input has binary_data_size"),
        (b"{" + b" " * P.MAX_JSON_HEADER + b"}", str(P.MAX_JSON_HEADER + 2), 413, "at most"),
    ]
    for b, hl, status, words in cases:
        with pytest.raises(ProtocolError) as e:
            parse_infer_request(b, hl, HWC, None)
        assert e.value.status == status and words in e.value.message, (words, e.value.message)
    # Without the header the binary body is not JSON.
    with pytest.raises(ProtocolError, match="not valid JSON"):
        parse(body)
    # FP32 NaN and out-of-range pixels through the binary path.
    for bad, words in ((np.nan, "NaN"), (300.0, "0..255")):
        b, h = encode_infer_request(np.full((1, *HWC), bad, np.float32), 50, binary=True)
        with pytest.raises(ProtocolError, match=words):
            parse(b, h)


def _with_data(dtype: str, data: list) -> bytes:
    return _mut(lambda d: d["inputs"][0].update(datatype=dtype, data=data))


@pytest.mark.parametrize("dtype", ["UINT8", "FP32"])
@pytest.mark.parametrize("value, words", [
    (10**399, "an integer of 400 digits"),
    (-(10**399), "an integer of 400 digits"),
    (2**64, f"the integer {2**64}"),
    (-(2**63) - 1, f"the integer {-(2**63) - 1}"),
], ids=["400 digits", "-400 digits", "2**64", "-2**63-1"])
def test_integers_beyond_64_bits_are_out_of_range(dtype, value, words):
    # numpy keeps them as Python objects; they are numbers, so "no strings, booleans or nulls" would be wrong.
    n = H * W * C
    for data in ([value] + [0] * (n - 1), [[0] * (n - 1) + [value]], [1.5, value] + [0] * (n - 2)):
        with pytest.raises(ProtocolError) as e:
            parse(_with_data(dtype, data))
        msg = e.value.message
        assert e.value.status == 400 and words in msg, msg
        assert "input 'input'" in msg and f"out of range for its datatype {dtype}" in msg and "no strings" not in msg
    # A string, boolean or null beside such an integer is still what the message names.
    for other in ("x", True, None):
        with pytest.raises(ProtocolError, match="no strings, booleans or nulls"):
            parse(_with_data(dtype, [value, other] + [0] * (n - 2)))


def test_header_length_is_decimal_digits_only():
    body, headers = encode_infer_request(np.zeros((1, *HWC), np.uint8), 50, binary=True)
    n = headers[HL]
    assert parse_infer_request(body, n, HWC, None).deadline_ms == 50.0
    assert parse_infer_request(body, "0" + n, HWC, None).deadline_ms == 50.0  # leading zeros, as Content-Length
    arabic = n.translate(str.maketrans("0123456789", "\u0660\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669"))
    # Each of these says the right length, written in a way int() forgives but Content-Length does not.
    for bad in (" " + n, n + " ", "\t" + n, n + "\n", "+" + n, n[0] + "_" + n[1:], arabic, "0" * 14 + n):
        with pytest.raises(ProtocolError) as e:
            parse_infer_request(body, bad, HWC, None)
        assert e.value.status == 400 and e.value.message.startswith(HL), (bad, e.value.message)
        assert "decimal digits only" in e.value.message, (bad, e.value.message)
    # "-0" is a negative length, not an empty JSON header.
    with pytest.raises(ProtocolError) as e:
        parse_infer_request(body, "-0", HWC, None)
    assert e.value.message.startswith(HL) and "outside the body" in e.value.message, e.value.message


def test_loads_json_is_strict():
    assert loads_json(memoryview(b'{"a": [1, 2.5]}'), "x") == {"a": [1, 2.5]}
    for bad, words in ((b"[Infinity]", "not valid JSON"), (b"[-Infinity]", "not valid JSON"),
                       (b"\xc3", "not UTF-8"), (b"[" * 50_000, "")):
        with pytest.raises(ProtocolError) as e:
            loads_json(bad, "the thing")
        assert e.value.status == 400 and words in e.value.message and "the thing" in e.value.message
    err = ProtocolError(503, "busy", headers={"Retry-After": "1"}, body={"x": 1})
    assert (err.status, err.message, err.headers, err.body, str(err)) == (503, "busy", {"Retry-After": "1"}, {"x": 1}, "busy")


# ----------------------------------------------------------------------------- fuzzing

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**400, 10**400) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=20,
)
_keys = st.sampled_from(["inputs", "parameters", "outputs", "id", "deadline_ms", "name", "shape", "datatype", "data",
                         "binary_data_size", "binary_data_output", "binary_data", "classification"])
_SMALL = (2, 2, 1)


def mutate_keys(draw, obj: dict, keys, values) -> None:
    """Set (to a drawn value) or remove 1-3 drawn keys of ``obj``, in place."""
    for _ in range(draw(st.integers(1, 3))):
        key = draw(keys)
        if draw(st.booleans()):
            obj[key] = draw(values)
        else:
            obj.pop(key, None)


@st.composite
def _mutated(draw) -> tuple[bytes, str | None]:
    """A valid small request (JSON or binary) with a few keys replaced or removed, maybe truncated."""
    binary = draw(st.booleans())
    dtype = draw(st.sampled_from([np.uint8, np.float32]))
    body, headers = encode_infer_request(np.zeros(_SMALL, dtype), 5, "i", binary=binary)
    hl = headers.get(HL)
    n = int(hl) if hl else len(body)
    d = json.loads(body[:n])
    d["outputs"] = [{"name": "class", "parameters": {}}]
    target = draw(st.sampled_from(["top", "param", "input", "input_param", "output", "output_param"]))
    obj = {"top": d, "param": d["parameters"], "input": d["inputs"][0], "output": d["outputs"][0],
           "output_param": d["outputs"][0]["parameters"]}.get(target)
    if obj is None:
        obj = d["inputs"][0].setdefault("parameters", {})
    mutate_keys(draw, obj, _keys, _json_values)
    js = json.dumps(d).encode()  # may hold NaN/Infinity: the parser must refuse them
    body = js + body[n:]
    if draw(st.booleans()):
        body = body[: draw(st.integers(0, len(body)))]
    return body, (str(len(js)) if hl else None)


_header_len = st.none() | st.integers(-5, 400).map(str) | st.text(max_size=6)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.tuples(st.binary(max_size=300), _header_len),
                 st.tuples(_json_values.map(lambda v: json.dumps(v).encode()), _header_len),
                 _mutated()))
def test_fuzz_only_protocol_errors_with_4xx(case):
    body, hl = case
    try:
        req = parse_infer_request(body, hl, _SMALL, None)
    except ProtocolError as e:
        assert 400 <= e.status < 500 and e.message
        encode_error(e.message, e.body)  # the error is always encodable
    else:
        assert req.image.shape == (1, *_SMALL) and req.image.dtype in (np.uint8, np.float32)
        assert 0 < req.deadline_ms <= P.MAX_DEADLINE_MS
        assert all(n in P.OUTPUTS and isinstance(b, bool) for n, b in req.outputs)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 999), st.binary(max_size=200), st.none() | st.text(max_size=4).map(lambda t: {HL.lower(): t}))
def test_fuzz_summarize_never_raises(status, body, headers):
    s = summarize_infer_response(status, body, headers)
    assert set(s) == {"pred", "params", "error"} and isinstance(s["params"], dict)


# ----------------------------------------------------------------------------- the compiled gate

def _outcome(f, body, hl, hwc=_SMALL, default=None):
    """What a parser makes of a request: ('ok', its fields) or ('refused', status, message)."""
    try:
        r = f(body, hl, hwc, default)
    except ProtocolError as e:
        return ("refused", e.status, e.message)
    return ("ok", r.image.dtype.str, r.image.shape, r.image.tobytes(), r.deadline_ms, r.request_id, r.outputs)


def test_every_malformed_request_is_refused_as_the_checks_refuse_it():
    # The msgspec gate (parse_infer_request) and the checks in Python (_parse_checked) agree on every
    # malformed request: the same status and the same message, which names the field.
    for name, (body, _, _) in MALFORMED.items():
        assert _outcome(parse_infer_request, body, None, HWC) == _outcome(P._parse_checked, body, None, HWC), name
    img = np.zeros((1, *HWC), np.uint8)
    body, headers = encode_infer_request(img, 50, binary=True)
    for hl in ("abc", "-1", str(len(body) + 1), headers[HL]):
        for b in (body, body[:-3], body + b"x"):
            assert _outcome(parse_infer_request, b, hl, HWC) == _outcome(P._parse_checked, b, hl, HWC), hl


def test_the_gate_accepts_what_the_checks_accept_and_leaves_the_rest_to_them():
    ok = encode_infer_request(np.zeros(_SMALL, np.uint8), 5, "i", binary=True)
    docs = [
        # Accepted by both: with and without the optional fields, as sent by other v2 clients.
        {"inputs": [{"name": "input", "shape": [2, 2, 1], "datatype": "UINT8", "data": [0, 1, 2, 3]}],
         "parameters": {"deadline_ms": 7}},
        {"inputs": [{"name": "input", "shape": [1, 2, 2, 1], "datatype": "FP32", "data": [0.5, 1, 2, 255]}],
         "parameters": None, "outputs": [], "id": None},
        {"inputs": [{"name": "input", "shape": [2, 2, 1], "datatype": "UINT8", "data": [[0, 1], [2, 3]],
                     "parameters": {}}], "parameters": {"deadline_ms": 1, "binary_data_output": True},
         "outputs": [{"name": "class", "parameters": {"binary_data": False}}, {"name": "logits", "parameters": None}]},
        # Fields the gate does not know: the checks ignore them and accept.
        {"inputs": [{"name": "input", "shape": [2, 2, 1], "datatype": "UINT8", "data": [0, 1, 2, 3],
                     "parameters": {"content_type": "x"}}], "parameters": {"deadline_ms": 3, "priority": 1}, "x": [[[]]]},
        # Falsy 'parameters' that the checks take as none.
        {"inputs": [{"name": "input", "shape": [2, 2, 1], "datatype": "UINT8", "data": [0, 1, 2, 3], "parameters": 0}],
         "parameters": {"deadline_ms": 3}, "outputs": [{"name": "class", "parameters": []}]},
        # Refused: each by the field it names.
        {"inputs": [{"name": "input", "shape": [2, 2, 1], "datatype": "UINT8", "data": [0, 1, 2, 3.5]}],
         "parameters": {"deadline_ms": 3}},
        {"inputs": [{"name": "input", "shape": [2, 2.0, 1], "datatype": "UINT8", "data": [0, 1, 2, 3]}],
         "parameters": {"deadline_ms": 3}},
        {"inputs": [{"name": "input", "shape": [2, 2, 1], "datatype": "UINT8", "data": [0, 1, 2, 3]}],
         "parameters": {"deadline_ms": 3, "binary_data_output": None}},
        {"inputs": [{"name": "input", "shape": [2, 2, 1], "datatype": "UINT8", "data": [0, 1, 2, 3]}],
         "parameters": {"deadline_ms": 3}, "outputs": [{"name": "class", "parameters": {"classification": None}}]},
        {"inputs": [{"name": "input", "shape": [True, 2, 1], "datatype": "UINT8", "data": [0, 1, 2, 3]}],
         "parameters": {"deadline_ms": 3}},
        {"inputs": [{"name": "input", "shape": [2, 2, 1], "datatype": "UINT8", "data": [0, 1, 2, 10**30]}],
         "parameters": {"deadline_ms": 3}},
    ]
    for d in docs:
        body = json.dumps(d).encode()
        for default in (None, 9.0):
            got = _outcome(parse_infer_request, body, None, _SMALL, default)
            assert got == _outcome(P._parse_checked, body, None, _SMALL, default), (d, got)
    assert _outcome(parse_infer_request, ok[0], ok[1][HL])[0] == "ok"
    # Deep nesting where the gate does not look (an unknown field) is still refused, as json refuses it.
    deep = b'{"x":' + b"[" * 5000 + b"]" * 5000 + b'}'
    assert _outcome(parse_infer_request, deep, None) == _outcome(P._parse_checked, deep, None)
    assert "nested too deeply" in _outcome(parse_infer_request, deep, None)[2]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.tuples(st.binary(max_size=300), _header_len),
                 st.tuples(_json_values.map(lambda v: json.dumps(v).encode()), _header_len),
                 _mutated()))
def test_fuzz_the_gate_and_the_checks_agree(case):
    body, hl = case
    assert _outcome(parse_infer_request, body, hl) == _outcome(P._parse_checked, body, hl)


def test_answers_are_written_from_templates_as_json():
    # The answer is one valid JSON document (non-ASCII names kept, numpy numbers written as numbers,
    # a non-finite number written null), and its binary outputs follow it.
    scores = np.asarray([[-1.5, 0.25]], np.float32)
    params = {"class_name": "Übung", "slowdown": np.float64(1.25), "met": np.bool_(True), "bad": float("nan")}
    for outputs in ((("logits", True), ("class", True)), (("class", False), ("logits", False)), (("logits", False),)):
        data, headers = encode_infer_response(np.int64(1), scores, outputs, "edge\"kit", "r\u00e9q", params)
        n = int(headers.get(HL, len(data)))
        head = json.loads(data[:n])
        assert head["model_name"] == "edge\"kit" and head["id"] == "r\u00e9q" and head["model_version"] == "1"
        assert head["parameters"] == {"class_name": "Übung", "slowdown": 1.25, "met": True, "bad": None}
        assert [o["name"] for o in head["outputs"]] == [o for o, _ in outputs]
        r = decode_infer_response(200, lower(headers), data)
        assert r.label == 1
        if any(name == "logits" for name, _ in outputs):
            np.testing.assert_array_equal(r.scores, scores[0])
    with pytest.raises(TypeError):
        encode_infer_response(0, scores, (("class", True),), "m", None, {"x": object()})
