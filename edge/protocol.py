"""The Open Inference Protocol (KServe v2) codec shared by the daemon, ``edge.client`` and the load generator."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MODEL_VERSION = "1"
MAX_DEADLINE_MS = 3_600_000.0  # an hour: anything longer is a unit mistake
MAX_JSON_HEADER = 1 << 20  # JSON part of a binary request
EXTENSIONS = ["binary_tensor_data", "model_repository", "edgekit_deadline"]
INPUT_DTYPES = {"UINT8": np.dtype("<u1"), "FP32": np.dtype("<f4")}
OUTPUTS = ("logits", "class")
INFER_HEADER_LENGTH = "Inference-Header-Content-Length"  # binary tensor extension: length of the JSON part

# Output datatypes a decoder understands (anything else is read as FP32, as before).
_OUT_DTYPES = {"FP32": "<f4", "INT64": "<i8", "INT32": "<i4", "UINT8": "<u1", "FP16": "<f2", "FP64": "<f8"}
_JSON_HEADERS = {"Content-Type": "application/json"}
_SEP = (",", ":")


# ============================================================================ errors


class ProtocolError(Exception):
    """A request the daemon must refuse: ``status`` (4xx), ``message``, extra response headers and body."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None, body: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.body = body


class ClientError(RuntimeError):
    """The daemon answered with an error other than a deadline rejection (408) or a full queue (503)."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


def encode_error(message: str, body: dict | None = None) -> bytes:
    """A JSON error body: ``body`` (if any) with ``"error": message`` added unless it already has one."""
    doc = dict(body) if body else {}
    doc.setdefault("error", message)
    return json.dumps(doc, separators=_SEP).encode()


# ============================================================================ JSON helpers


def _no_constants(name: str) -> Any:
    raise ValueError(f"'{name}' is not a valid JSON number")


def loads_json(data: bytes | bytearray | memoryview, what: str) -> Any:
    """Parse strict JSON (UTF-8, no NaN/Infinity); ProtocolError(400) naming ``what`` otherwise."""
    try:
        return json.loads(str(data, "utf-8"), parse_constant=_no_constants)
    except UnicodeDecodeError:
        raise ProtocolError(400, f"{what} is not UTF-8 text") from None
    except RecursionError:
        raise ProtocolError(400, f"{what} is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError is a ValueError
        raise ProtocolError(400, f"{what} is not valid JSON: {exc}") from None


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _f(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


# ============================================================================ server side: requests


@dataclass(frozen=True)
class InferRequest:
    """A validated infer request."""

    image: np.ndarray  # (1, H, W, C) uint8 or float32 (read-only when it came as binary data)
    deadline_ms: float
    request_id: str | None
    outputs: tuple[tuple[str, bool], ...]  # (name, binary)


def parse_infer_request(
    body: bytes | memoryview,
    header_len: str | None,
    input_hwc: tuple[int, ...],
    default_deadline_ms: float | None,
) -> InferRequest:
    """Validate a v2 infer request (JSON or binary extension); ProtocolError(4xx) names what is wrong.

    ``header_len`` is the Inference-Header-Content-Length header (None when absent).
    """
    if header_len is not None:
        try:
            n = int(header_len.strip())
        except ValueError:
            raise ProtocolError(400, f"Inference-Header-Content-Length must be an integer, got {header_len!r}") from None
        if not 0 <= n <= len(body):
            raise ProtocolError(400, f"Inference-Header-Content-Length {n} is outside the body's {len(body)} bytes")
        if n > MAX_JSON_HEADER:
            raise ProtocolError(413, f"the JSON header is {n} bytes; at most {MAX_JSON_HEADER}")
        mv = memoryview(body)
        doc = loads_json(mv[:n], "the JSON header")
        binary = mv[n:]
    else:
        if not len(body):
            raise ProtocolError(400, "empty body; send a v2 inference request: {\"inputs\": [...], \"parameters\": {\"deadline_ms\": ...}}")
        doc = loads_json(body, "the request body")
        binary = memoryview(b"")
    if not isinstance(doc, dict):
        raise ProtocolError(400, f"the request must be a JSON object, got {type(doc).__name__}")

    rid = doc.get("id")
    if rid is not None and not isinstance(rid, str):
        raise ProtocolError(400, f"'id' must be a string, got {type(rid).__name__}")
    params = doc.get("parameters", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ProtocolError(400, f"'parameters' must be an object, got {type(params).__name__}")

    # --- deadline
    if "deadline_ms" in params:
        dl = params["deadline_ms"]
        if not _is_num(dl):
            raise ProtocolError(400, f"parameters.deadline_ms must be a number of milliseconds, got {json.dumps(dl)[:60]}")
        try:
            dl = float(dl)
        except OverflowError:  # an integer too large for a float
            dl = math.inf if dl > 0 else -math.inf
        if not math.isfinite(dl) or dl <= 0:
            raise ProtocolError(400, f"parameters.deadline_ms must be a finite number > 0, got {dl}")
        if dl > MAX_DEADLINE_MS:
            raise ProtocolError(400, f"parameters.deadline_ms {dl:g} is over {MAX_DEADLINE_MS:g} ms; it is relative, in ms")
    elif default_deadline_ms is not None:
        dl = float(default_deadline_ms)
    else:
        raise ProtocolError(400, "missing parameters.deadline_ms: the time allowed for this request, in ms (relative, > 0)")

    binary_default = params.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise ProtocolError(400, "parameters.binary_data_output must be true or false")

    # --- inputs
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ProtocolError(400, "'inputs' must be a non-empty list with one tensor named 'input'")
    if len(inputs) != 1:
        raise ProtocolError(400, f"expected exactly one input tensor ('input'), got {len(inputs)}")
    t = inputs[0]
    if not isinstance(t, dict):
        raise ProtocolError(400, "each input must be an object with name, shape, datatype and data")
    name = t.get("name")
    if name != "input":
        raise ProtocolError(400, f"unknown input {json.dumps(name)[:60]}; this model takes one input named 'input'")
    dtype_name = t.get("datatype")
    if not isinstance(dtype_name, str) or dtype_name not in INPUT_DTYPES:
        raise ProtocolError(400, f"input datatype must be one of {sorted(INPUT_DTYPES)} (pixel values 0..255), "
                                 f"got {json.dumps(dtype_name)[:40]}")
    dt = INPUT_DTYPES[dtype_name]
    shape = t.get("shape")
    if not isinstance(shape, list) or not all(_is_int(s) for s in shape):
        raise ProtocolError(400, f"input shape must be a list of integers, got {json.dumps(shape)[:60]}")
    want = list(input_hwc)
    if shape == [1, *want] or shape == want:
        pass
    elif len(shape) == len(want) + 1 and shape[1:] == want:
        raise ProtocolError(400, f"batch size must be 1 (one image per request, each with its own deadline), got {shape[0]}")
    else:
        raise ProtocolError(400, f"input shape {shape} does not match the model's [1, {', '.join(map(str, want))}] (NHWC)")
    count = math.prod(want)
    tparams = t.get("parameters", {}) or {}
    if not isinstance(tparams, dict):
        raise ProtocolError(400, "input 'parameters' must be an object")

    if "binary_data_size" in tparams:
        size = tparams["binary_data_size"]
        if not _is_int(size) or size < 0:
            raise ProtocolError(400, f"binary_data_size must be a non-negative integer, got {json.dumps(size)[:40]}")
        if header_len is None:
            raise ProtocolError(400, "binary_data_size given but no Inference-Header-Content-Length header; "
                                     "send the JSON length in that header and the tensor bytes after the JSON")
        need = count * dt.itemsize
        if size != need:
            raise ProtocolError(400, f"binary_data_size is {size} bytes; a {dtype_name} {shape} tensor is {need} bytes")
        if len(binary) != size:
            raise ProtocolError(400, f"the body carries {len(binary)} bytes after the JSON header; binary_data_size says {size}")
        if "data" in t:
            raise ProtocolError(400, "input has both 'data' and binary_data_size; send one")
        arr = np.frombuffer(binary, dtype=dt, count=count)
    else:
        if len(binary):
            raise ProtocolError(400, f"{len(binary)} bytes follow the JSON header but no input has binary_data_size")
        if "data" not in t:
            raise ProtocolError(400, "input has no 'data' (or binary_data_size with the binary tensor extension)")
        arr = _json_tensor(t["data"], count, dtype_name)
    if dtype_name == "FP32":
        a = arr
        if not np.all(np.isfinite(a)):
            raise ProtocolError(400, "input has NaN or infinite values; send pixel values 0..255")
        if a.size and (float(a.min()) < 0.0 or float(a.max()) > 255.0):
            raise ProtocolError(400, f"FP32 input values must be pixel values in 0..255, "
                                     f"got {float(a.min()):g}..{float(a.max()):g}")
        arr = a.astype(np.float32, copy=False)
    image = arr.reshape((1, *want))

    # --- outputs
    outs = doc.get("outputs")
    selected: list[tuple[str, bool]] = []
    if outs is not None:
        if not isinstance(outs, list):
            raise ProtocolError(400, "'outputs' must be a list of {\"name\": ...} objects")
        for o in outs:
            if not isinstance(o, dict) or not isinstance(o.get("name"), str) or o["name"] not in OUTPUTS:
                nm = o.get("name") if isinstance(o, dict) else o
                raise ProtocolError(400, f"unknown output {json.dumps(nm)[:60]}; this model has {list(OUTPUTS)}")
            op = o.get("parameters", {}) or {}
            if not isinstance(op, dict):
                raise ProtocolError(400, "output 'parameters' must be an object")
            b = op.get("binary_data", binary_default)
            if not isinstance(b, bool):
                raise ProtocolError(400, "output parameters.binary_data must be true or false")
            if "classification" in op:
                raise ProtocolError(400, "the classification extension is not supported; read the 'class' output")
            selected.append((o["name"], b))
    if not selected:
        return InferRequest(image, dl, rid, tuple((n, binary_default) for n in OUTPUTS))
    return InferRequest(image, dl, rid, tuple(selected))


def _json_tensor(data: Any, count: int, dtype_name: str) -> np.ndarray:
    if not isinstance(data, list):
        raise ProtocolError(400, f"input 'data' must be a list of numbers, got {type(data).__name__}")
    try:
        a = np.asarray(data)
    except (ValueError, OverflowError, TypeError, RecursionError):
        raise ProtocolError(400, "input 'data' is a ragged nested list; send a flat (or regularly nested) list of numbers") from None
    if a.dtype.kind not in "iuf":
        raise ProtocolError(400, "input 'data' must hold only numbers (no strings, booleans or nulls)")
    if a.size != count:
        raise ProtocolError(400, f"input 'data' has {a.size} values; the shape needs {count}")
    a = a.reshape(-1)
    if dtype_name == "UINT8":
        if a.dtype.kind == "f":
            if not np.all(np.isfinite(a)):
                raise ProtocolError(400, "UINT8 input has NaN or infinite values")
            if not np.all(a == np.floor(a)):
                raise ProtocolError(400, "UINT8 input must hold integers 0..255")
        if a.size and (a.min() < 0 or a.max() > 255):
            raise ProtocolError(400, f"UINT8 input values must be in 0..255, got {a.min()}..{a.max()}")
        return a.astype(np.uint8)
    return a.astype(np.float64)


# ============================================================================ server side: responses


def encode_infer_response(
    label: int,
    scores: np.ndarray | None,
    outputs: tuple[tuple[str, bool], ...] | list[tuple[str, bool]],
    model_name: str,
    request_id: str | None,
    params: dict,
) -> tuple[bytes, dict[str, str]]:
    """(body, headers) of a v2 infer response; outputs asked for as binary go after the JSON (binary extension)."""
    out_json = []
    blobs: list[bytes] = []
    if scores is None:
        scores = np.zeros((1, 0), np.float32)
    for name, binary in outputs:
        if name == "logits":
            t: dict[str, Any] = {"name": "logits", "datatype": "FP32", "shape": [1, int(scores.shape[-1])]}
            if binary:
                b = np.ascontiguousarray(scores, dtype="<f4").tobytes()
                t["parameters"] = {"binary_data_size": len(b)}
                blobs.append(b)
            else:
                t["data"] = np.asarray(scores, dtype=np.float64).reshape(-1).tolist()
        else:
            t = {"name": "class", "datatype": "INT64", "shape": [1]}
            if binary:
                b = np.asarray([label], dtype="<i8").tobytes()
                t["parameters"] = {"binary_data_size": len(b)}
                blobs.append(b)
            else:
                t["data"] = [int(label)]
        out_json.append(t)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": MODEL_VERSION}
    if request_id is not None:
        doc["id"] = request_id
    doc["parameters"] = params
    doc["outputs"] = out_json
    head = json.dumps(doc, separators=_SEP).encode()
    if blobs:
        return head + b"".join(blobs), {
            "Content-Type": "application/octet-stream",
            INFER_HEADER_LENGTH: str(len(head)),
        }
    return head, {"Content-Type": "application/json"}


# ============================================================================ client side


def encode_infer_request(
    image: np.ndarray, deadline_ms: float, request_id: str | None = None, binary: bool = True
) -> tuple[bytes, dict[str, str]]:
    """(body, headers) of an infer request for one image: (H, W, C) or (1, H, W, C), uint8 or 0..255 floats.

    ``binary`` sends the pixels (and asks for the outputs) with the binary tensor data extension.
    """
    img = np.asarray(image)
    if img.ndim == 3:
        img = img[None]
    if img.ndim != 4 or img.shape[0] != 1:
        raise ValueError(f"expected one image (H, W, C) or (1, H, W, C), got shape {img.shape}")
    if img.dtype == np.uint8:
        dt, arr = "UINT8", img
    else:
        dt, arr = "FP32", img.astype("<f4")
    head: dict[str, Any] = {
        "inputs": [{"name": "input", "shape": list(arr.shape), "datatype": dt}],
        "parameters": {"deadline_ms": float(deadline_ms)},
    }
    if request_id is not None:
        head["id"] = request_id
    if binary:
        raw = np.ascontiguousarray(arr).tobytes()
        head["inputs"][0]["parameters"] = {"binary_data_size": len(raw)}
        head["parameters"]["binary_data_output"] = True
        js = json.dumps(head, separators=_SEP).encode()
        return js + raw, {INFER_HEADER_LENGTH: str(len(js)), "Content-Type": "application/octet-stream"}
    head["inputs"][0]["data"] = arr.reshape(-1).tolist()
    return json.dumps(head, separators=_SEP).encode(), {"Content-Type": "application/json"}


@dataclass(frozen=True)
class Classification:
    """The answer to one request. ``status`` 200: answered; 408: rejected (deadline cannot be met);
    503: queue full. ``label`` is -1 and ``scores`` empty unless answered."""

    label: int
    scores: np.ndarray = field(repr=False)
    variant: str | None
    deadline_met: bool
    predicted_ms: float | None
    queue_ms: float | None
    inference_ms: float | None
    total_ms: float | None
    status: int = 200
    slowdown: float | None = None
    policy: str = ""
    error: str = ""
    params: dict = field(default_factory=dict, repr=False, compare=False)  # every response parameter

    @property
    def ok(self) -> bool:
        return self.status == 200


def split_binary(headers: dict[str, str], data: bytes) -> tuple[dict, bytes]:
    """(JSON header, the binary part) of a response that may use the binary tensor extension.

    ``headers`` has lower-cased names (as ``edge.client.Connection`` returns them).
    """
    n = headers.get("inference-header-content-length")
    if n is None:
        return json.loads(data) if data else {}, b""
    k = int(n)
    return json.loads(data[:k]), data[k:]


def output_arrays(doc: dict, blob: bytes) -> dict[str, np.ndarray]:
    """Output tensors by name, JSON or binary (in the order the outputs are listed)."""
    out: dict[str, np.ndarray] = {}
    off = 0
    for o in doc.get("outputs", []):
        dt = np.dtype(_OUT_DTYPES.get(o.get("datatype"), "<f4"))
        shape = tuple(o.get("shape", (-1,)))
        size = (o.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            arr = np.frombuffer(blob, dtype=dt, count=int(size) // dt.itemsize, offset=off)
            off += int(size)
        else:
            arr = np.asarray(o.get("data", []), dtype=dt)
        out[o["name"]] = arr.reshape(shape) if arr.size == int(np.prod(shape)) else arr
    return out


def decode_infer_response(status: int, headers: dict[str, str], data: bytes) -> Classification:
    """The Classification in an infer answer (200, 408 or 503); ClientError for any other answer."""
    try:
        doc, blob = split_binary(headers, data)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ClientError(status, f"answer is not JSON: {data[:100]!r}") from None
    if not isinstance(doc, dict):
        raise ClientError(status, "answer is not a JSON object")
    p = doc.get("parameters") or {}
    if status in (408, 503):
        return Classification(
            label=-1, scores=np.zeros(0, np.float32), variant=p.get("variant"), deadline_met=False,
            predicted_ms=_f(p.get("predicted_ms")), queue_ms=_f(p.get("queue_ms")),
            inference_ms=_f(p.get("inference_ms")), total_ms=_f(p.get("total_ms")), status=status,
            slowdown=_f(p.get("slowdown")), policy=str(p.get("policy", "") or ""), error=str(doc.get("error", "")),
            params=p if isinstance(p, dict) else {},
        )
    if status != 200:
        raise ClientError(status, str(doc.get("error", "")))
    outs = output_arrays(doc, blob)
    scores = outs.get("logits", np.zeros((1, 0), np.float32)).reshape(-1).astype(np.float32)
    if "class" in outs:
        label = int(outs["class"].reshape(-1)[0])
    elif scores.size:
        label = int(np.argmax(scores))
    else:
        label = -1
    return Classification(
        label=label, scores=scores, variant=p.get("variant"), deadline_met=bool(p.get("deadline_met", False)),
        predicted_ms=_f(p.get("predicted_ms")), queue_ms=_f(p.get("queue_ms")),
        inference_ms=_f(p.get("inference_ms")), total_ms=_f(p.get("total_ms")), status=200,
        slowdown=_f(p.get("slowdown")), policy=str(p.get("policy", "") or ""),
        params=p if isinstance(p, dict) else {},
    )


# ============================================================================ load-generator side


class RequestEncoder:
    """Pre-serialised v2 infer requests for a set of uint8 images: each image is encoded once, before
    the timed run, and ``request`` only appends the deadline and id.

    JSON by default; ``binary=True`` sends the pixels with the binary tensor data extension and asks
    for binary outputs (``summarize_infer_response`` reads both).
    """

    def __init__(self, images: np.ndarray, indices: np.ndarray, binary: bool = False):
        if images.dtype != np.uint8:
            raise ValueError(f"eval images must be uint8 pixels, got {images.dtype}")
        self.binary = binary
        self.shape = [1, *(int(s) for s in images.shape[1:])]
        shape = json.dumps(self.shape, separators=_SEP).encode()
        self._data: dict[int, bytes] = {}
        for i in np.unique(indices):
            img = images[int(i)]
            if binary:
                self._data[int(i)] = np.ascontiguousarray(img, dtype="<u1").tobytes()
            else:
                self._data[int(i)] = json.dumps(img.reshape(-1).tolist(), separators=_SEP).encode()
        if binary:
            size = math.prod(self.shape)
            self._head = (b'{"inputs":[{"name":"input","shape":' + shape
                          + b',"datatype":"UINT8","parameters":{"binary_data_size":%d}}],' % size)
        else:
            self._head = b'{"inputs":[{"name":"input","shape":' + shape + b',"datatype":"UINT8","data":'

    def request(self, image_index: int, deadline_ms: float, req_id: int) -> tuple[bytes, dict[str, str]]:
        """(body, content headers) of request ``req_id``: image ``image_index`` with a relative deadline in ms."""
        if self.binary:
            js = self._head + (
                '"parameters":{"deadline_ms":%s,"binary_data_output":true},"id":"%d"}' % (repr(float(deadline_ms)), req_id)
            ).encode()
            return js + self._data[int(image_index)], {
                "Content-Type": "application/octet-stream", INFER_HEADER_LENGTH: str(len(js)),
            }
        return self.body(image_index, deadline_ms, req_id), _JSON_HEADERS

    def body(self, image_index: int, deadline_ms: float, req_id: int) -> bytes:
        """The body of request ``req_id`` (JSON mode; in binary mode use ``request`` for its headers too)."""
        if self.binary:
            return self.request(image_index, deadline_ms, req_id)[0]
        tail = ('}],"parameters":{"deadline_ms":%s},"id":"%d"}' % (repr(float(deadline_ms)), req_id)).encode()
        return self._head + self._data[int(image_index)] + tail


def _present(v: Any) -> bool:
    return v.size > 0 if isinstance(v, np.ndarray) else bool(v)


def summarize_infer_response(status: int, body: bytes, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """``{"pred", "params", "error"}`` of a v2 infer answer (or a 4xx/5xx error body); never raises.

    ``pred`` is the 'class' output, else the argmax of 'logits', else -1 (with ``error`` saying why).
    Binary outputs are read when ``headers`` carries Inference-Header-Content-Length.
    """
    out: dict[str, Any] = {"pred": -1, "params": {}, "error": ""}
    n = None
    if headers:
        n = headers.get("inference-header-content-length")
        if n is None:
            n = headers.get(INFER_HEADER_LENGTH)
    blob = b""
    try:
        head = body
        if n is not None:
            k = int(n)
            if not 0 <= k <= len(body):
                raise ValueError(k)
            head, blob = body[:k], body[k:]
        doc = json.loads(str(head, "utf-8")) if head else {}
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        out["error"] = f"HTTP {status}: answer is not JSON: {bytes(body[:120])!r}"
        return out
    if not isinstance(doc, dict):
        out["error"] = f"HTTP {status}: answer is not a JSON object"
        return out
    params = doc.get("parameters") or {}
    out["params"] = params if isinstance(params, dict) else {}
    if status != 200:
        out["error"] = str(doc.get("error", f"HTTP {status}"))
        return out
    pred = -1
    logits = None
    off = 0
    outputs = doc.get("outputs") or []
    for o in outputs if isinstance(outputs, list) else ():
        if not isinstance(o, dict):
            continue
        values = o.get("data")
        op = o.get("parameters")
        size = op.get("binary_data_size") if isinstance(op, dict) else None
        if _is_int(size) and size >= 0:
            chunk = blob[off:off + size]
            off += size
            dt = _OUT_DTYPES.get(o.get("datatype"))  # type: ignore[arg-type]
            values = None
            if dt is not None and len(chunk) == size and size % np.dtype(dt).itemsize == 0:
                values = np.frombuffer(chunk, dtype=dt)
        if values is None or not _present(values):
            continue
        if o.get("name") == "class":
            try:
                pred = int(np.asarray(values).reshape(-1)[0])
            except (TypeError, ValueError, IndexError, OverflowError):
                pass
        elif o.get("name") == "logits":
            logits = values
    if pred < 0 and logits is not None:
        try:
            pred = int(np.argmax(np.asarray(logits, dtype=np.float64).reshape(-1)))
        except (TypeError, ValueError, OverflowError):
            pass
    if pred < 0:
        out["error"] = "answer has neither a 'class' nor a 'logits' output"
    out["pred"] = pred
    return out
