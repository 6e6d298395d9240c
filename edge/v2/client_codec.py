"""The client's side of the v2 codec: infer requests encoded, the daemon's answers decoded, load-generator bodies.

The codec has two sides: this one and the daemon's, ``edge.v2.codec``. A Python user imports the
client, ``from edge.v2.client import Client``, which builds on this module, and from here only the
names of what it answers and raises (``Classification``, ``ClientError``); the load generator uses
``RequestEncoder`` and ``summarize_infer_response``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge.core.errors import EdgekitError, UsageError
from edge.v2.codec import INFER_HEADER_LENGTH, is_int
from edge.v2.errors import JSON_SEPARATORS

# Output datatypes a decoder understands (anything else is read as FP32, as before).
_OUT_DTYPES = {"FP32": "<f4", "INT64": "<i8", "INT32": "<i4", "UINT8": "<u1", "FP16": "<f2", "FP64": "<f8"}
_JSON_HEADERS = {"Content-Type": "application/json"}


class ClientError(EdgekitError, RuntimeError):
    """The daemon answered with an error other than a deadline rejection (408) or a full queue (503)."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


def _f(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


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
        raise UsageError(f"expected one image (H, W, C) or (1, H, W, C), got shape {img.shape}")
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
        js = json.dumps(head, separators=JSON_SEPARATORS).encode()
        return js + raw, {INFER_HEADER_LENGTH: str(len(js)), "Content-Type": "application/octet-stream"}
    head["inputs"][0]["data"] = arr.reshape(-1).tolist()
    return json.dumps(head, separators=JSON_SEPARATORS).encode(), {"Content-Type": "application/json"}


@dataclass(frozen=True)
class Classification:
    """The answer to one request. ``status`` 200: answered; 408: rejected (deadline cannot be met);
    503: queue full. ``label`` is -1 and ``scores`` empty unless answered; ``class_name`` is the
    label's name from the bundle (the daemon's ``class_name`` response parameter; "" when it has none)."""

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
    class_name: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200


def split_binary(headers: dict[str, str], data: bytes) -> tuple[dict, bytes]:
    """(JSON header, the binary part) of a response that may use the binary tensor extension.

    ``headers`` has lower-cased names (as ``edge.v2.client.ClientConnection`` returns them).
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
        class_name=str(p.get("class_name") or "") if label >= 0 else "",
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
            raise UsageError(f"eval images must be uint8 pixels, got {images.dtype}")
        self.binary = binary
        self.shape = [1, *(int(s) for s in images.shape[1:])]
        shape = json.dumps(self.shape, separators=JSON_SEPARATORS).encode()
        self._data: dict[int, bytes] = {}
        for i in np.unique(indices):
            img = images[int(i)]
            if binary:
                self._data[int(i)] = np.ascontiguousarray(img, dtype="<u1").tobytes()
            else:
                self._data[int(i)] = json.dumps(img.reshape(-1).tolist(), separators=JSON_SEPARATORS).encode()
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
                '"parameters":{"deadline_ms":%s,"binary_data_output":true},"id":"%d"}'
                % (repr(float(deadline_ms)), req_id)
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
                raise UsageError(k)
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
        if is_int(size) and size >= 0:
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
