"""The daemon's side of the v2 (Open Inference Protocol, KServe v2) codec: constants, requests checked, answers encoded.

The codec has two sides: this one, which ``edgekit serve`` runs, and ``edge.v2.client_codec``,
the client's (requests encoded, answers decoded). A Python user imports neither: the client is
``from edge.v2.client import Client``. The refusal error both sides share is ``edge.v2.errors``.

A request is checked twice over only when it is refused. Its JSON is first decoded by msgspec
(compiled) into Structs that mirror the v2 request, typed as strictly as the checks below
(no unknown fields, no booleans for numbers, flat numeric ``data``), and a request that then
passes the value checks is accepted. Anything else, whatever msgspec disliked, goes through
the checks in Python (``_parse_checked``), which refuse it with the message that names the field
and say what to send: so the compiled gate never accepts what the checks refuse, and every
refusal keeps its status and words (``tests/edge/v2/test_codec.py`` compares the two paths).
An answer is written from templates made once per output selection; only its parameters are
encoded per request.
"""

from __future__ import annotations

import functools
import json
import math
import re
import struct
from dataclasses import dataclass
from typing import Any, TypeGuard

import msgspec
import numpy as np

from edge.core.errors import UsageError
from edge.v2.errors import ProtocolError

MODEL_VERSION = "1"
MAX_DEADLINE_MS = 3_600_000.0  # an hour: anything longer is a unit mistake
MAX_JSON_HEADER = 1 << 20  # JSON part of a binary request
EXTENSIONS = ["binary_tensor_data", "model_repository", "edgekit_deadline"]
INPUT_DTYPES: dict[str, np.dtype] = {"UINT8": np.dtype("<u1"), "FP32": np.dtype("<f4")}
OUTPUTS = ("logits", "class")
INFER_HEADER_LENGTH = "Inference-Header-Content-Length"  # binary tensor extension: length of the JSON part
_CLASS_BLOB = struct.Struct("<q")  # the class output, binary: one little-endian INT64
_HEADER_LENGTH_TEXT = re.compile(r"-?[0-9]{1,15}")  # as strict as Content-Length (edge.serve.http)



# ============================================================================ JSON helpers


def _no_constants(name: str) -> Any:
    raise UsageError(f"'{name}' is not a valid JSON number")


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


def is_int(x: Any) -> TypeGuard[int]:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


# ============================================================================ server side: requests


@dataclass(frozen=True)
class InferRequest:
    """A validated infer request."""

    image: np.ndarray  # (1, H, W, C) uint8 or float32 (read-only when it came as binary data)
    deadline_ms: float
    request_id: str | None
    outputs: tuple[tuple[str, bool], ...]  # (name, binary)


# The v2 request as msgspec decodes it: each field typed as strictly as the checks of
# _parse_checked take it (a field they ignore is not allowed here, so a document that is deep
# or odd anywhere is left to them), and nothing decoded here is nested more than four deep.


class _TensorParameters(msgspec.Struct, forbid_unknown_fields=True):
    binary_data_size: int | msgspec.UnsetType = msgspec.UNSET


class _InputDoc(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    datatype: str
    shape: list[int]
    parameters: _TensorParameters | None = None
    data: list[int | float] | msgspec.UnsetType = msgspec.UNSET  # flat; a nested list is left to the checks


class _RequestParameters(msgspec.Struct, forbid_unknown_fields=True):
    deadline_ms: float | msgspec.UnsetType = msgspec.UNSET  # an integer is taken as a float, as float() does
    binary_data_output: bool = False


class _OutputParameters(msgspec.Struct, forbid_unknown_fields=True):
    binary_data: bool | msgspec.UnsetType = msgspec.UNSET


class _OutputDoc(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    parameters: _OutputParameters | None = None


class _RequestDoc(msgspec.Struct, forbid_unknown_fields=True):
    inputs: list[_InputDoc]
    id: str | None = None
    parameters: _RequestParameters | None = None
    outputs: list[_OutputDoc] | None = None


_DECODE_REQUEST = msgspec.json.Decoder(_RequestDoc).decode
_ALL_OUTPUTS = {b: tuple((n, b) for n in OUTPUTS) for b in (False, True)}


def parse_infer_request(
    body: bytes | memoryview,
    header_len: str | None,
    input_hwc: tuple[int, ...],
    default_deadline_ms: float | None,
) -> InferRequest:
    """Validate a v2 infer request (JSON or binary extension); ProtocolError(4xx) names what is wrong.

    ``header_len`` is the Inference-Header-Content-Length header (None when absent).
    The checks run in a fixed order (framing, the document, parameters, the input, the outputs),
    so a request with several faults always gets the same message.
    """
    if header_len is not None:
        n = _header_length(header_len, len(body))
        mv = memoryview(body)
        head: bytes | memoryview = mv[:n]
        binary = mv[n:]
    else:
        head, binary = body, memoryview(b"")
    try:
        doc = _DECODE_REQUEST(head)
    except (msgspec.MsgspecError, RecursionError):
        doc = None
    if doc is not None:
        req = _accept(doc, binary, header_len is not None, input_hwc, default_deadline_ms)
        if req is not None:
            return req
    return _parse_checked(body, header_len, input_hwc, default_deadline_ms)


def _accept(doc: _RequestDoc, binary: memoryview, has_header: bool, input_hwc: tuple[int, ...],
            default_deadline_ms: float | None) -> InferRequest | None:
    """The request, when the decoded document passes every check of ``_parse_checked``; None when one
    fails (those checks then say which). Raises only what ``_parse_checked`` would raise at the same
    point for the same values (the input's pixel checks, which it shares)."""
    p = doc.parameters
    if p is None or p.deadline_ms is msgspec.UNSET:
        if default_deadline_ms is None:
            return None
        dl = float(default_deadline_ms)
    else:
        dl = p.deadline_ms
        if not 0.0 < dl <= MAX_DEADLINE_MS:  # also false for NaN
            return None
    binary_default = False if p is None else p.binary_data_output
    inputs = doc.inputs
    if len(inputs) != 1:
        return None
    t = inputs[0]
    dtype_name = t.datatype
    if t.name != "input" or dtype_name not in INPUT_DTYPES:
        return None
    want = list(input_hwc)
    shape = t.shape
    if shape != want and shape != [1, *want]:
        return None
    count = math.prod(want)
    size = msgspec.UNSET if t.parameters is None else t.parameters.binary_data_size
    if size is not msgspec.UNSET:
        dt = INPUT_DTYPES[dtype_name]
        if not has_header or size != count * dt.itemsize or len(binary) != size or t.data is not msgspec.UNSET:
            return None
        arr = np.frombuffer(binary, dtype=dt, count=count)
    else:
        if len(binary) or t.data is msgspec.UNSET:
            return None
        arr = _json_tensor(t.data, count, dtype_name)
    if dtype_name == "FP32":
        arr = _fp32_pixels(arr)
    outs = doc.outputs
    if outs:
        selected = []
        for o in outs:
            if o.name not in OUTPUTS:
                return None
            op = o.parameters
            b = binary_default if op is None or op.binary_data is msgspec.UNSET else op.binary_data
            selected.append((o.name, b))
        outputs = tuple(selected)
    else:
        outputs = _ALL_OUTPUTS[binary_default]
    return InferRequest(arr.reshape((1, *input_hwc)), dl, doc.id, outputs)


def _parse_checked(
    body: bytes | memoryview,
    header_len: str | None,
    input_hwc: tuple[int, ...],
    default_deadline_ms: float | None,
) -> InferRequest:
    """``parse_infer_request`` in Python, each check in turn: the one that refuses says what is wrong."""
    doc, binary = _split_body(body, header_len)
    rid = _request_id(doc)
    dl, binary_default = _request_parameters(doc, default_deadline_ms)
    # --- inputs
    tensor = _input_tensor(doc, input_hwc)
    image = _input_pixels(tensor, binary, header_len is not None).reshape((1, *input_hwc))
    # --- outputs
    return InferRequest(image, dl, rid, _outputs(doc, binary_default))


def _split_body(body: bytes | memoryview, header_len: str | None) -> tuple[Any, memoryview]:
    """(the parsed JSON document, the binary part after it: empty unless the binary extension is used)."""
    if header_len is not None:
        n = _header_length(header_len, len(body))
        mv = memoryview(body)
        return loads_json(mv[:n], "the JSON header"), mv[n:]
    if not len(body):
        raise ProtocolError(
            400,
            "empty body; send a v2 inference request: {\"inputs\": [...], \"parameters\": {\"deadline_ms\": ...}}",
        )
    return loads_json(body, "the request body"), memoryview(b"")


def _header_length(header_len: str, body_len: int) -> int:
    """The Inference-Header-Content-Length value: written like Content-Length, within the body, not over the cap."""
    # No int() leniency (spaces, '+', '_', non-ASCII digits): the framing is as strict as Content-Length's.
    # A leading '-' still parses, so that a negative length (even -0) is refused as outside the body.
    if not _HEADER_LENGTH_TEXT.fullmatch(header_len):
        raise ProtocolError(
            400, f"{INFER_HEADER_LENGTH} must be an integer in decimal digits only (at most 15, no spaces or '+'), "
                 f"got {header_len[:40]!r}"
        )
    n = int(header_len)
    if header_len.startswith("-") or n > body_len:
        raise ProtocolError(400, f"{INFER_HEADER_LENGTH} {header_len} is outside the body's {body_len} bytes")
    if n > MAX_JSON_HEADER:
        raise ProtocolError(413, f"the JSON header is {n} bytes; at most {MAX_JSON_HEADER}")
    return n


def _request_id(doc: Any) -> str | None:
    """The request's 'id', once the document is known to be a JSON object."""
    if not isinstance(doc, dict):
        raise ProtocolError(400, f"the request must be a JSON object, got {type(doc).__name__}")
    rid = doc.get("id")
    if rid is not None and not isinstance(rid, str):
        raise ProtocolError(400, f"'id' must be a string, got {type(rid).__name__}")
    return rid


def _request_parameters(doc: dict, default_deadline_ms: float | None) -> tuple[float, bool]:
    """(deadline in ms, whether outputs are binary unless an output says otherwise) from the request 'parameters'."""
    params = doc.get("parameters", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ProtocolError(400, f"'parameters' must be an object, got {type(params).__name__}")

    # --- deadline
    dl = _deadline_ms(params, default_deadline_ms)

    binary_default = params.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise ProtocolError(400, "parameters.binary_data_output must be true or false")
    return dl, binary_default


def _deadline_ms(params: dict, default_deadline_ms: float | None) -> float:
    if "deadline_ms" in params:
        dl = params["deadline_ms"]
        if not _is_num(dl):
            raise ProtocolError(
                400, f"parameters.deadline_ms must be a number of milliseconds, got {json.dumps(dl)[:60]}"
            )
        try:
            dl = float(dl)
        except OverflowError:  # an integer too large for a float
            dl = math.inf if dl > 0 else -math.inf
        if not math.isfinite(dl) or dl <= 0:
            raise ProtocolError(400, f"parameters.deadline_ms must be a finite number > 0, got {dl}")
        if dl > MAX_DEADLINE_MS:
            raise ProtocolError(
                400, f"parameters.deadline_ms {dl:g} is over {MAX_DEADLINE_MS:g} ms; it is relative, in ms"
            )
        return dl
    if default_deadline_ms is not None:
        return float(default_deadline_ms)
    raise ProtocolError(
        400, "missing parameters.deadline_ms: the time allowed for this request, in ms (relative, > 0)"
    )


@dataclass(frozen=True)
class _InputTensor:
    """The one input tensor of a request, its name, datatype and shape checked against the model."""

    tensor: dict  # the request's input object, for its 'data'
    dtype_name: str  # a key of INPUT_DTYPES
    shape: list[int]  # as sent: [1, H, W, C] or [H, W, C]
    count: int  # values in one image
    params: dict  # the input's 'parameters'


def _input_tensor(doc: dict, input_hwc: tuple[int, ...]) -> _InputTensor:
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
    shape = t.get("shape")
    if not isinstance(shape, list) or not all(is_int(s) for s in shape):
        raise ProtocolError(400, f"input shape must be a list of integers, got {json.dumps(shape)[:60]}")
    want = list(input_hwc)
    if shape == [1, *want] or shape == want:
        pass
    elif len(shape) == len(want) + 1 and shape[1:] == want:
        raise ProtocolError(
            400, f"batch size must be 1 (one image per request, each with its own deadline), got {shape[0]}"
        )
    else:
        raise ProtocolError(
            400, f"input shape {shape} does not match the model's [1, {', '.join(map(str, want))}] (NHWC)"
        )
    tparams = t.get("parameters", {}) or {}
    if not isinstance(tparams, dict):
        raise ProtocolError(400, "input 'parameters' must be an object")
    return _InputTensor(t, dtype_name, shape, math.prod(want), tparams)


def _input_pixels(inp: _InputTensor, binary: memoryview, has_header: bool) -> np.ndarray:
    """The input's values, flat: from the binary part or from 'data'; FP32 ones checked as pixels."""
    if "binary_data_size" in inp.params:
        arr = _binary_tensor(inp, binary, has_header)
    else:
        if len(binary):
            raise ProtocolError(400, f"{len(binary)} bytes follow the JSON header but no input has binary_data_size")
        if "data" not in inp.tensor:
            raise ProtocolError(400, "input has no 'data' (or binary_data_size with the binary tensor extension)")
        arr = _json_tensor(inp.tensor["data"], inp.count, inp.dtype_name)
    if inp.dtype_name == "FP32":
        return _fp32_pixels(arr)
    return arr


def _binary_tensor(inp: _InputTensor, binary: memoryview, has_header: bool) -> np.ndarray:
    size = inp.params["binary_data_size"]
    if not is_int(size) or size < 0:
        raise ProtocolError(400, f"binary_data_size must be a non-negative integer, got {json.dumps(size)[:40]}")
    if not has_header:
        raise ProtocolError(400, "binary_data_size given but no Inference-Header-Content-Length header; "
                                 "send the JSON length in that header and the tensor bytes after the JSON")
    dt = INPUT_DTYPES[inp.dtype_name]
    need = inp.count * dt.itemsize
    if size != need:
        raise ProtocolError(400, f"binary_data_size is {size} bytes; a {inp.dtype_name} {inp.shape} tensor is "
                                 f"{need} bytes")
    if len(binary) != size:
        raise ProtocolError(
            400, f"the body carries {len(binary)} bytes after the JSON header; binary_data_size says {size}"
        )
    if "data" in inp.tensor:
        raise ProtocolError(400, "input has both 'data' and binary_data_size; send one")
    return np.frombuffer(binary, dtype=dt, count=inp.count)


def _fp32_pixels(a: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(a)):
        raise ProtocolError(400, "input has NaN or infinite values; send pixel values 0..255")
    if a.size and (float(a.min()) < 0.0 or float(a.max()) > 255.0):
        raise ProtocolError(400, f"FP32 input values must be pixel values in 0..255, "
                                 f"got {float(a.min()):g}..{float(a.max()):g}")
    return a.astype(np.float32, copy=False)


def _outputs(doc: dict, binary_default: bool) -> tuple[tuple[str, bool], ...]:
    """(name, binary) of each output asked for; every output (as ``binary_default``) when none is named."""
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
        return tuple((n, binary_default) for n in OUTPUTS)
    return tuple(selected)


def _json_tensor(data: Any, count: int, dtype_name: str) -> np.ndarray:
    if not isinstance(data, list):
        raise ProtocolError(400, f"input 'data' must be a list of numbers, got {type(data).__name__}")
    try:
        a = np.asarray(data)
    except (ValueError, OverflowError, TypeError, RecursionError):
        raise ProtocolError(
            400, "input 'data' is a ragged nested list; send a flat (or regularly nested) list of numbers"
        ) from None
    if a.dtype.kind not in "iuf":
        # numpy keeps integers beyond 64 bits as Python objects: those are numbers, but out of range.
        big = _widest_int(a)
        if big is not None:
            raise ProtocolError(400, f"input 'input' holds {big}, out of range for its datatype {dtype_name}; "
                                     f"send pixel values 0..255")
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


def _widest_int(a: np.ndarray) -> str | None:
    """The largest-magnitude integer of an object array that holds only numbers, in words; None otherwise."""
    if a.dtype.kind != "O" or not all(_is_num(x) for x in a.flat):
        return None
    big = max((x for x in a.flat if is_int(x)), key=abs, default=None)
    if big is None:
        return None
    digits = str(abs(big))  # JSON integers have at most 4300 digits (Python's str limit), so this converts
    return f"the integer {big}" if len(digits) <= 20 else f"an integer of {len(digits)} digits"


# ============================================================================ server side: responses


def _plain(x: Any) -> Any:
    """A numpy scalar (a result's float64, a bool_) as the Python number msgspec writes."""
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"cannot write a {type(x).__name__} as JSON")


# Answers are written with msgspec: compact, UTF-8, and a non-finite number as null (valid JSON,
# where json.dumps wrote NaN, which strict parsers refuse).
_ENCODE = msgspec.json.Encoder(enc_hook=_plain).encode


@functools.lru_cache(maxsize=256)
def _response_prefix(model_name: str, request_id: str | None) -> bytes:
    """The answer's JSON up to its parameters' value."""
    rid = b"" if request_id is None else b',"id":' + _ENCODE(request_id)
    return (b'{"model_name":' + _ENCODE(model_name) + b',"model_version":' + _ENCODE(MODEL_VERSION) + rid
            + b',"parameters":')


@functools.lru_cache(maxsize=64)
def _outputs_template(outputs: tuple[tuple[str, bool], ...], classes: int) -> tuple[tuple[str, bool, bytes], ...]:
    """Per output asked for, (name, binary, its JSON): complete when binary, up to its 'data' value otherwise."""
    out = []
    for name, binary in outputs:
        if name == "logits":
            t: dict[str, Any] = {"name": "logits", "datatype": "FP32", "shape": [1, classes]}
            size = 4 * classes
        else:
            t = {"name": "class", "datatype": "INT64", "shape": [1]}
            size = 8
        js = _ENCODE(t)[:-1]  # without its closing brace
        if binary:
            out.append((name, True, js + b',"parameters":{"binary_data_size":%d}}' % size))
        else:
            out.append((name, False, js + b',"data":'))
    return tuple(out)


def encode_infer_response(
    label: int,
    scores: np.ndarray | None,
    outputs: tuple[tuple[str, bool], ...] | list[tuple[str, bool]],
    model_name: str,
    request_id: str | None,
    params: dict,
) -> tuple[bytes, dict[str, str]]:
    """(body, headers) of a v2 infer response; outputs asked for as binary go after the JSON (binary extension)."""
    if scores is None:
        scores = np.zeros((1, 0), np.float32)
    parts = [_response_prefix(model_name, request_id), _ENCODE(params), b',"outputs":[']
    blobs: list[bytes] = []
    template = _outputs_template(tuple(outputs), int(scores.shape[-1]))
    for k, (name, binary, js) in enumerate(template):
        if k:
            parts.append(b",")
        parts.append(js)
        if name == "logits":
            if binary:
                blobs.append(np.ascontiguousarray(scores, dtype="<f4").tobytes())
            else:
                parts.append(_ENCODE(np.asarray(scores, dtype=np.float64).reshape(-1).tolist()) + b"}")
        elif binary:
            blobs.append(_CLASS_BLOB.pack(int(label)))
        else:
            parts.append(b"[%d]}" % int(label))
    parts.append(b"]}")
    head = b"".join(parts)
    if blobs:
        return head + b"".join(blobs), {
            "Content-Type": "application/octet-stream",
            INFER_HEADER_LENGTH: str(len(head)),
        }
    return head, {"Content-Type": "application/json"}
