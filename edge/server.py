"""`edgekit serve`: the deadline-aware inference daemon, speaking the Open Inference Protocol (KServe v2).

One logical model (``edgekit`` by default) is served; its variants are internal.  Each
request carries ``parameters.deadline_ms``; the EDF scheduler (``edge.scheduler``) and the
selector (``edge.selector``) answer it with the most accurate variant predicted to fit.

Endpoints: ``GET /v2/health/live``, ``GET /v2/health/ready``, ``GET /v2``,
``GET /v2/models/{name}``, ``GET /v2/models/{name}/ready``,
``POST /v2/models/{name}/infer`` (JSON tensors and the binary tensor data extension),
``GET /metrics`` (Prometheus), ``POST /admin/reload`` and
``POST /v2/repository/models/{name}/load`` (hot reload of the selected table; SIGHUP
does the same), ``GET /admin/status``.
"""

from __future__ import annotations

import argparse
import hmac
import json
import math
import os
import signal
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np

from edge.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from edge.metrics import ServerMetrics
from edge.scheduler import InferenceRequest, InferenceResult, QueueFull, Scheduler, ServingState, ShuttingDown
from edge.selector import MISS_POLICIES, Policy, Selector
from edge.slowdown import FILTERS, make_filter
from edge.table import QUANTILES, TableError

SERVER_NAME = "edgekit"
MODEL_VERSION = "1"
MAX_DEADLINE_MS = 3_600_000.0  # an hour: anything longer is a unit mistake
MAX_JSON_HEADER = 1 << 20  # JSON part of a binary request
WARMUP_RUNS = 5
EXTENSIONS = ["binary_tensor_data", "model_repository", "edgekit_deadline"]
INPUT_DTYPES = {"UINT8": np.dtype("<u1"), "FP32": np.dtype("<f4")}
OUTPUTS = ("logits", "class")


def _log(msg: str) -> None:
    print(f"edgekit serve: {msg}", file=sys.stderr, flush=True)


class HttpError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None, body: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.body = body


# ============================================================================ loading


@dataclass
class VariantInfo:
    variant: str
    artifact_id: str
    setting: str
    ready: bool
    reason: str = ""
    provider: str = ""


class ModelHost:
    """Loads, canary-checks and warms the variants of a selected table; builds serving states."""

    def __init__(self, bundle, profile, workers: int, warmup: int = WARMUP_RUNS):
        self.bundle = bundle
        self.profile = profile
        self.workers = workers
        self.warmup = warmup
        # variant -> per-worker loaded copies (only variants that passed the canary)
        self.loaded: dict[str, list] = {}
        self.info: dict[str, VariantInfo] = {}
        self.input_hwc: tuple[int, ...] | None = None
        self.classes: int | None = None

    def _setting(self, row):
        for s in self.profile.settings:
            if s.name == row.setting:
                if s.backend != row.backend:
                    raise ValueError(f"profile runs setting '{s.name}' with {s.backend}, the table with {row.backend}")
                return s
        raise ValueError(
            f"profile '{self.profile.name}' has no runtime setting '{row.setting}' "
            f"(has {[s.name for s in self.profile.settings]}); benchmark with this profile"
        )

    def _warm(self, model) -> None:
        from edge.manifest import prepare_input

        imgs = self.bundle.canary().images
        img = imgs[:1] if len(imgs) else np.zeros((1, *self.input_hwc), np.uint8)  # type: ignore[misc]
        x = prepare_input(img, model.input_spec)
        for _ in range(self.warmup):
            model.predict(x)

    def load_variant(self, row) -> VariantInfo:
        """Load ``row``'s variant once per worker; run the canary on the first copy."""
        from edge.backends import BackendUnavailable, get_backend
        from edge.bundle import BundleError, check_canary

        v = row.variant
        if v in self.loaded:
            return self.info[v]
        try:
            setting = self._setting(row)
            path = self.bundle.artifact_path(row.artifact_id)
            backend = get_backend(setting.backend)
            first = backend.load(path, setting)
        except (BackendUnavailable, BundleError, ValueError, OSError) as exc:
            info = VariantInfo(v, row.artifact_id, row.setting, False, f"cannot load: {exc}")
            self.info[v] = info
            return info
        hwc = tuple(int(s) for s in first.input_spec.shape[1:])
        classes = int(first.output_spec.shape[-1])
        if self.input_hwc is not None and (hwc != self.input_hwc or classes != self.classes):
            info = VariantInfo(v, row.artifact_id, row.setting, False,
                               f"takes {hwc} -> {classes} classes, the other variants {self.input_hwc} -> {self.classes}")
            self.info[v] = info
            return info
        try:
            res = check_canary(self.bundle, row.artifact_id, first)
            ok, msg = bool(res.ok), str(res.message)
        except (BundleError, ValueError) as exc:
            ok, msg = False, f"canary could not run: {exc}"
        if not ok:
            info = VariantInfo(v, row.artifact_id, row.setting, False, msg, first.provider)
            self.info[v] = info
            first.close()
            return info
        if self.input_hwc is None:
            self.input_hwc, self.classes = hwc, classes
        copies = [first]
        try:
            for _ in range(1, self.workers):
                copies.append(backend.load(path, setting))
            for m in copies:
                self._warm(m)
        except (ValueError, OSError) as exc:
            info = VariantInfo(v, row.artifact_id, row.setting, False, f"warm-up failed: {exc}", first.provider)
            self.info[v] = info
            return info
        self.loaded[v] = copies
        info = VariantInfo(v, row.artifact_id, row.setting, True, msg, first.provider)
        self.info[v] = info
        return info

    def retain(self, variants: set[str]) -> None:
        """Forget the loaded copies of variants no longer served (requests still running on them
        hold their own references, so the runtime frees them once those finish)."""
        for v in list(self.loaded):
            if v not in variants:
                del self.loaded[v]

    def state_for(self, table, selector_args: dict, slowdown, table_path: str, generation: int) -> ServingState:
        """Load what ``table`` needs and build a serving state; ValueError if no variant is usable."""
        rows = []
        for row in table.rows:
            info = self.load_variant(row)
            if info.ready:
                rows.append(row)
            else:
                _log(f"variant {row.variant} is NOT ready and is excluded: {info.reason}")
        if not rows:
            raise ValueError(
                f"no variant of {table_path} could be loaded and passed its canary check; see the messages above"
            )
        selector = Selector(rows, slowdown=slowdown, **selector_args)
        models = tuple({r.variant: self.loaded[r.variant][w] for r in rows} for w in range(self.workers))
        return ServingState(selector=selector, models=models, table_path=table_path, generation=generation)


# ============================================================================ request parsing


def _no_constants(name: str) -> Any:
    raise ValueError(f"'{name}' is not a valid JSON number")


def _loads(data: bytes, what: str) -> Any:
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_no_constants)
    except UnicodeDecodeError:
        raise HttpError(400, f"{what} is not UTF-8 text") from None
    except RecursionError:
        raise HttpError(400, f"{what} is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError is a ValueError
        raise HttpError(400, f"{what} is not valid JSON: {exc}") from None


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


@dataclass
class ParsedInfer:
    image: np.ndarray  # (1, H, W, C) uint8 or float32
    deadline_ms: float
    request_id: str | None
    outputs: list[tuple[str, bool]]  # (name, binary)


def parse_infer(body: bytes, header_len: str | None, input_hwc: tuple[int, ...], default_deadline_ms: float | None) -> ParsedInfer:
    """Validate a v2 infer request (JSON or binary extension); HttpError(4xx) names what is wrong."""
    if header_len is not None:
        try:
            n = int(header_len.strip())
        except ValueError:
            raise HttpError(400, f"Inference-Header-Content-Length must be an integer, got {header_len!r}") from None
        if not 0 <= n <= len(body):
            raise HttpError(400, f"Inference-Header-Content-Length {n} is outside the body's {len(body)} bytes")
        if n > MAX_JSON_HEADER:
            raise HttpError(413, f"the JSON header is {n} bytes; at most {MAX_JSON_HEADER}")
        doc = _loads(body[:n], "the JSON header")
        binary = memoryview(body)[n:]
    else:
        if not body:
            raise HttpError(400, "empty body; send a v2 inference request: {\"inputs\": [...], \"parameters\": {\"deadline_ms\": ...}}")
        doc = _loads(body, "the request body")
        binary = memoryview(b"")
    if not isinstance(doc, dict):
        raise HttpError(400, f"the request must be a JSON object, got {type(doc).__name__}")

    rid = doc.get("id")
    if rid is not None and not isinstance(rid, str):
        raise HttpError(400, f"'id' must be a string, got {type(rid).__name__}")
    params = doc.get("parameters", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise HttpError(400, f"'parameters' must be an object, got {type(params).__name__}")

    # --- deadline
    if "deadline_ms" in params:
        dl = params["deadline_ms"]
        if not _is_num(dl):
            raise HttpError(400, f"parameters.deadline_ms must be a number of milliseconds, got {json.dumps(dl)[:60]}")
        dl = float(dl)
        if not math.isfinite(dl) or dl <= 0:
            raise HttpError(400, f"parameters.deadline_ms must be a finite number > 0, got {dl}")
        if dl > MAX_DEADLINE_MS:
            raise HttpError(400, f"parameters.deadline_ms {dl:g} is over {MAX_DEADLINE_MS:g} ms; it is relative, in ms")
    elif default_deadline_ms is not None:
        dl = float(default_deadline_ms)
    else:
        raise HttpError(400, "missing parameters.deadline_ms: the time allowed for this request, in ms (relative, > 0)")

    binary_default = params.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise HttpError(400, "parameters.binary_data_output must be true or false")

    # --- inputs
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise HttpError(400, "'inputs' must be a non-empty list with one tensor named 'input'")
    if len(inputs) != 1:
        raise HttpError(400, f"expected exactly one input tensor ('input'), got {len(inputs)}")
    t = inputs[0]
    if not isinstance(t, dict):
        raise HttpError(400, "each input must be an object with name, shape, datatype and data")
    name = t.get("name")
    if name != "input":
        raise HttpError(400, f"unknown input {json.dumps(name)[:60]}; this model takes one input named 'input'")
    dtype_name = t.get("datatype")
    if not isinstance(dtype_name, str) or dtype_name not in INPUT_DTYPES:
        raise HttpError(400, f"input datatype must be one of {sorted(INPUT_DTYPES)} (pixel values 0..255), got {json.dumps(dtype_name)[:40]}")
    dt = INPUT_DTYPES[dtype_name]
    shape = t.get("shape")
    if not isinstance(shape, list) or not all(_is_int(s) for s in shape):
        raise HttpError(400, f"input shape must be a list of integers, got {json.dumps(shape)[:60]}")
    want = list(input_hwc)
    if shape == [1, *want] or shape == want:
        pass
    elif len(shape) == len(want) + 1 and shape[1:] == want:
        raise HttpError(400, f"batch size must be 1 (one image per request, each with its own deadline), got {shape[0]}")
    else:
        raise HttpError(400, f"input shape {shape} does not match the model's [1, {', '.join(map(str, want))}] (NHWC)")
    count = int(np.prod(want))
    tparams = t.get("parameters", {}) or {}
    if not isinstance(tparams, dict):
        raise HttpError(400, "input 'parameters' must be an object")

    if "binary_data_size" in tparams:
        size = tparams["binary_data_size"]
        if not _is_int(size) or size < 0:
            raise HttpError(400, f"binary_data_size must be a non-negative integer, got {json.dumps(size)[:40]}")
        if header_len is None:
            raise HttpError(400, "binary_data_size given but no Inference-Header-Content-Length header; "
                                 "send the JSON length in that header and the tensor bytes after the JSON")
        need = count * dt.itemsize
        if size != need:
            raise HttpError(400, f"binary_data_size is {size} bytes; a {dtype_name} {shape} tensor is {need} bytes")
        if len(binary) != size:
            raise HttpError(400, f"the body carries {len(binary)} bytes after the JSON header; binary_data_size says {size}")
        if "data" in t:
            raise HttpError(400, "input has both 'data' and binary_data_size; send one")
        arr = np.frombuffer(binary, dtype=dt, count=count)
    else:
        if len(binary):
            raise HttpError(400, f"{len(binary)} bytes follow the JSON header but no input has binary_data_size")
        if "data" not in t:
            raise HttpError(400, "input has no 'data' (or binary_data_size with the binary tensor extension)")
        arr = _json_tensor(t["data"], count, dtype_name)
    if dtype_name == "FP32":
        a = arr
        if not np.all(np.isfinite(a)):
            raise HttpError(400, "input has NaN or infinite values; send pixel values 0..255")
        if a.size and (float(a.min()) < 0.0 or float(a.max()) > 255.0):
            raise HttpError(400, f"FP32 input values must be pixel values in 0..255, got {float(a.min()):g}..{float(a.max()):g}")
        arr = a.astype(np.float32, copy=False)
    image = arr.reshape((1, *want))

    # --- outputs
    outs = doc.get("outputs")
    selected: list[tuple[str, bool]] = []
    if outs is None:
        selected = [(n, binary_default) for n in OUTPUTS]
    else:
        if not isinstance(outs, list):
            raise HttpError(400, "'outputs' must be a list of {\"name\": ...} objects")
        for o in outs:
            if not isinstance(o, dict) or not isinstance(o.get("name"), str) or o["name"] not in OUTPUTS:
                nm = o.get("name") if isinstance(o, dict) else o
                raise HttpError(400, f"unknown output {json.dumps(nm)[:60]}; this model has {list(OUTPUTS)}")
            op = o.get("parameters", {}) or {}
            if not isinstance(op, dict):
                raise HttpError(400, "output 'parameters' must be an object")
            b = op.get("binary_data", binary_default)
            if not isinstance(b, bool):
                raise HttpError(400, "output parameters.binary_data must be true or false")
            if "classification" in op:
                raise HttpError(400, "the classification extension is not supported; read the 'class' output")
            selected.append((o["name"], b))
        if not selected:
            selected = [(n, binary_default) for n in OUTPUTS]
    return ParsedInfer(image, dl, rid, selected)


def _json_tensor(data: Any, count: int, dtype_name: str) -> np.ndarray:
    if not isinstance(data, list):
        raise HttpError(400, f"input 'data' must be a list of numbers, got {type(data).__name__}")
    try:
        a = np.asarray(data)
    except (ValueError, OverflowError, TypeError, RecursionError):
        raise HttpError(400, "input 'data' is a ragged nested list; send a flat (or regularly nested) list of numbers") from None
    if a.dtype.kind not in "iuf":
        raise HttpError(400, "input 'data' must hold only numbers (no strings, booleans or nulls)")
    if a.size != count:
        raise HttpError(400, f"input 'data' has {a.size} values; the shape needs {count}")
    a = a.reshape(-1)
    if dtype_name == "UINT8":
        if a.dtype.kind == "f":
            if not np.all(np.isfinite(a)):
                raise HttpError(400, "UINT8 input has NaN or infinite values")
            if not np.all(a == np.floor(a)):
                raise HttpError(400, "UINT8 input must hold integers 0..255")
        if a.size and (a.min() < 0 or a.max() > 255):
            raise HttpError(400, f"UINT8 input values must be in 0..255, got {a.min()}..{a.max()}")
        return a.astype(np.uint8)
    return a.astype(np.float64)


def encode_infer_response(
    res: InferenceResult, outputs: list[tuple[str, bool]], model_name: str, request_id: str | None, params: dict
) -> tuple[bytes, dict[str, str]]:
    """A v2 infer response; outputs asked for as binary go after the JSON (binary tensor extension)."""
    out_json = []
    blobs: list[bytes] = []
    scores = res.scores if res.scores is not None else np.zeros((1, 0), np.float32)
    for name, binary in outputs:
        if name == "logits":
            t: dict[str, Any] = {"name": "logits", "datatype": "FP32", "shape": [1, int(scores.shape[-1])]}
            if binary:
                b = np.ascontiguousarray(scores, dtype="<f4").tobytes()
                t["parameters"] = {"binary_data_size": len(b)}
                blobs.append(b)
            else:
                t["data"] = [float(x) for x in scores.reshape(-1)]
        else:
            t = {"name": "class", "datatype": "INT64", "shape": [1]}
            if binary:
                b = np.asarray([res.label], dtype="<i8").tobytes()
                t["parameters"] = {"binary_data_size": len(b)}
                blobs.append(b)
            else:
                t["data"] = [int(res.label)]
        out_json.append(t)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": MODEL_VERSION}
    if request_id is not None:
        doc["id"] = request_id
    doc["parameters"] = params
    doc["outputs"] = out_json
    head = json.dumps(doc, separators=(",", ":")).encode()
    if blobs:
        return head + b"".join(blobs), {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(head)),
        }
    return head, {"Content-Type": "application/json"}


def _r(x: float) -> float:
    return round(float(x), 4)


# ============================================================================ the daemon


class Daemon:
    """Everything a request handler needs: the scheduler, the loaded variants, metrics, settings."""

    def __init__(self, args: argparse.Namespace):
        from device_profiles import load_profile
        from edge.bundle import open_bundle
        from edge.selection import SelectedTable

        self.args = args
        self.model_name = args.model_name
        self.token = args.token if args.token is not None else os.environ.get("EDGEKIT_TOKEN") or None
        self.max_body = int(args.max_body_mb * 1024 * 1024)
        self.default_deadline_ms = args.default_deadline_ms
        t0 = time.perf_counter()
        self.bundle = open_bundle(args.bundle, verify=True)
        prof_name = args.profile or self.bundle.profile
        if not prof_name:
            raise ValueError("the bundle names no profile; pass --profile")
        self.profile = load_profile(prof_name)
        self.table_path = str(args.table)
        table = SelectedTable.load(self.table_path, profile=self.profile.name)
        self.workers = int(args.workers or self.profile.workers)
        self.host = ModelHost(self.bundle, self.profile, self.workers)
        self.filter = make_filter(args.filter)
        self.policy = Policy.from_string(args.policy)
        self.selector_args = dict(
            quantile=args.quantile or table.params.quantile, policy=self.policy, miss=args.miss
        )
        self.generation = 0
        state = self.host.state_for(table, self.selector_args, self.filter, self.table_path, 0)
        self.table = table
        self.classes = int(self.host.classes or 0)
        self.input_hwc = tuple(self.host.input_hwc or ())
        self.labels = tuple(self.bundle.class_names)
        self.metrics = ServerMetrics(queue_depth=lambda: self.scheduler.depth, slowdown=lambda: self.filter.factor)
        self.scheduler = Scheduler(
            state,
            queue_size=args.queue_size,
            workers=self.workers,
            on_inference=lambda v, ms: self.metrics.inference.observe(ms / 1000.0, variant=v),
            inject_delay_ms=args.inject_delay_ms,
        )
        self._update_ready_metrics()
        self.reload_lock = threading.Lock()
        self.draining = False
        self.inflight = 0
        self._inflight_lock = threading.Lock()
        self.started = time.time()
        self.load_s = time.perf_counter() - t0

    # ---------------------------------------------------------------- reload

    def _update_ready_metrics(self) -> None:
        self.metrics.ready.clear()
        serving = set(self.scheduler.state.selector.variants)
        for v in self.table.variants:
            self.metrics.ready.set(1.0 if v in serving else 0.0, variant=v)

    def reload(self, path: str | None = None) -> tuple[bool, str]:
        """Re-read the selected table (``path`` or the current one); keep the old one if the new is bad."""
        from edge.selection import SelectedTable

        with self.reload_lock:
            target = str(path or self.table_path)
            try:
                table = SelectedTable.load(target, profile=self.profile.name)
                if self.policy.kind == "static" and self.policy.variant not in table.variants:
                    raise ValueError(f"the static policy's variant '{self.policy.variant}' is not in the new table")
                args = dict(self.selector_args, quantile=self.args.quantile or table.params.quantile)
                state = self.host.state_for(table, args, self.filter, target, self.generation + 1)
            except (TableError, ValueError, OSError) as exc:
                self.host.retain(set(self.scheduler.state.selector.variants))
                self.metrics.reloads.inc(result="failed")
                msg = f"reload failed, still serving {self.table_path} ({len(self.scheduler.state.selector)} variants): {exc}"
                _log(msg)
                return False, msg
            self.generation += 1
            self.scheduler.swap(state)
            self.host.retain(set(state.selector.variants))
            self.table = table
            self.table_path = target
            self._update_ready_metrics()
            self.metrics.reloads.inc(result="ok")
            msg = f"reloaded {target}: serving {len(state.selector)} variants {list(state.selector.variants)}"
            _log(msg)
            return True, msg

    # ---------------------------------------------------------------- descriptions

    @property
    def ready(self) -> bool:
        return not self.draining and len(self.scheduler.state.selector) > 0

    def variants_status(self) -> list[dict]:
        sel = self.scheduler.state.selector
        serving = set(sel.variants)
        out = []
        for v in self.table.variants:
            info = self.host.info.get(v)
            row = self.table.row(v)
            out.append({
                "variant": v,
                "ready": v in serving,
                "reason": "" if info is None else info.reason,
                "provider": "" if info is None else info.provider,
                f"{sel.quantile}_ms": row.latency(sel.quantile),
                "accuracy": row.accuracy,
            })
        return out

    def model_metadata(self) -> dict:
        return {
            "name": self.model_name,
            "versions": [MODEL_VERSION],
            "platform": "edgekit-adaptive",
            "inputs": [{"name": "input", "datatype": "UINT8", "shape": [-1, *self.input_hwc]}],
            "outputs": [
                {"name": "logits", "datatype": "FP32", "shape": [-1, self.classes]},
                {"name": "class", "datatype": "INT64", "shape": [-1]},
            ],
            "parameters": {
                "accepts_datatypes": sorted(INPUT_DTYPES),
                "labels": list(self.labels),
                "policy": str(self.policy),
                "miss": self.args.miss,
                "deadline_parameter": "deadline_ms",
            },
            "variants": self.variants_status(),
        }

    def status(self) -> dict:
        sel = self.scheduler.state.selector
        return {
            "ready": self.ready,
            "draining": self.draining,
            "table": self.table_path,
            "generation": self.scheduler.state.generation,
            "profile": self.profile.name,
            "workers": self.workers,
            "queue_depth": self.scheduler.depth,
            "queue_size": self.scheduler.queue_size,
            "busy_workers": self.scheduler.busy,
            "overhead_ms": self.scheduler.overhead_ms,
            "selector": sel.describe(),
            "variants": self.variants_status(),
            "uptime_s": round(time.time() - self.started, 3),
        }


# ============================================================================ HTTP


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "edgekit/" + MODEL_VERSION
    sys_version = ""
    timeout = 300  # idle keep-alive connections give their thread back eventually
    daemon: Daemon  # set on the class by make_server

    # ------------------------------------------------------------ plumbing

    def setup(self) -> None:
        super().setup()
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, fmt: str, *args: Any) -> None:
        if getattr(self.daemon.args, "access_log", False):
            sys.stderr.write("%s - %s\n" % (self.address_string(), fmt % args))

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        hdrs = {"Content-Type": "application/json"}
        hdrs.update(headers or {})
        for k, v in hdrs.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        if self.command == "HEAD":
            body = b""
        # Headers and body in one write: with Nagle off, two writes would be two packets.
        if not hasattr(self, "_headers_buffer"):  # an HTTP/0.9 request line sends no headers
            self._headers_buffer = []
        self._headers_buffer.append(b"\r\n" + body)
        self.flush_headers()

    def _json(self, status: int, doc: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(doc, separators=(",", ":")).encode(), headers)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # Malformed request lines and headers: answer in JSON like every other error, then close.
        self.close_connection = True
        if code == 501:  # an HTTP method we do not serve is the client's mistake
            code = 405
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "error"
        self._json(code, {"error": message or phrase})

    def _error(self, e: HttpError) -> None:
        doc = dict(e.body) if e.body else {}
        doc.setdefault("error", e.message)
        self._json(e.status, doc, e.headers)

    def _read_body(self) -> bytes:
        te = self.headers.get("Transfer-Encoding")
        if te and te.lower() != "identity":
            self.close_connection = True
            raise HttpError(411, "chunked transfer encoding is not supported; send a Content-Length")
        cl = self.headers.get("Content-Length")
        if cl is None:
            if self.command == "POST":
                self.close_connection = True
                raise HttpError(411, "missing Content-Length header")
            return b""
        try:
            n = int(cl)
            if n < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            raise HttpError(400, f"bad Content-Length {cl!r}") from None
        if n > self.daemon.max_body:
            self.close_connection = True
            raise HttpError(413, f"request body is {n} bytes; this daemon accepts at most {self.daemon.max_body} "
                                 f"(--max-body-mb {self.daemon.args.max_body_mb:g})", body=None)
        data = self.rfile.read(n) if n else b""
        if len(data) != n:
            self.close_connection = True
            raise HttpError(400, f"body ended after {len(data)} of {n} bytes")
        return data

    def _drain_after_413(self) -> None:
        """Swallow (bounded) the unread body so the client reads our 413 rather than a reset."""
        try:
            n = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            return
        left = min(n, 256 * 1024 * 1024)
        end = time.monotonic() + 5.0
        try:
            self.connection.settimeout(1.0)
            while left > 0 and time.monotonic() < end:
                chunk = self.rfile.read(min(left, 1 << 16))
                if not chunk:
                    break
                left -= len(chunk)
        except OSError:
            pass

    def _authorized(self) -> bool:
        tok = self.daemon.token
        if not tok:
            return True
        got = self.headers.get("Authorization", "")
        if not got.startswith("Bearer "):
            return False
        return hmac.compare_digest(got[7:].strip().encode(), tok.encode())

    def _handle(self) -> None:
        d = self.daemon
        arrival = time.perf_counter()
        body = b""
        try:
            try:
                body = self._read_body()
            except HttpError as e:
                if e.status == 413:
                    d.metrics.requests.inc(outcome="invalid")
                    self._error(e)
                    self._drain_after_413()
                    return
                raise
            path = urlsplit(self.path).path
            parts = [unquote(p) for p in path.split("/") if p]
            if parts[:2] != ["v2", "health"] and not self._authorized():
                d.metrics.requests.inc(outcome="unauthorized")
                raise HttpError(401, "missing or wrong bearer token (Authorization: Bearer <token>)",
                                headers={"WWW-Authenticate": 'Bearer realm="edgekit"'})
            enc = self.headers.get("Content-Encoding")
            if body and enc and enc.lower() != "identity":
                raise HttpError(415, f"Content-Encoding {enc!r} is not supported; send the body uncompressed")
            self._route(parts, body, arrival)
        except HttpError as e:
            if e.status not in (401, 408, 503):
                d.metrics.requests.inc(outcome="invalid")
            self._error(e)
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception as exc:  # a bug: say so, keep serving
            traceback.print_exc()
            self.close_connection = True
            try:
                self._json(500, {"error": f"internal error: {type(exc).__name__}: {exc}"})
            except OSError:
                pass

    do_GET = _handle
    do_POST = _handle
    do_PUT = _handle
    do_DELETE = _handle
    do_PATCH = _handle
    do_HEAD = _handle
    do_OPTIONS = _handle

    # ------------------------------------------------------------ routing

    def _need(self, method: str) -> None:
        if self.command != method and not (method == "GET" and self.command == "HEAD"):
            raise HttpError(405, f"{self.command} is not allowed here; use {method}", headers={"Allow": method})

    def _model(self, name: str) -> None:
        if name != self.daemon.model_name:
            raise HttpError(404, f"unknown model '{name}'; this daemon serves '{self.daemon.model_name}'")

    def _route(self, p: list[str], body: bytes, arrival: float) -> None:
        d = self.daemon
        if p == ["v2", "health", "live"]:
            self._need("GET")
            return self._json(200, {"live": True})
        if p == ["v2", "health", "ready"]:
            self._need("GET")
            return self._json(200 if d.ready else 503, {"ready": d.ready})
        if p == ["v2"]:
            self._need("GET")
            return self._json(200, {"name": SERVER_NAME, "version": MODEL_VERSION, "extensions": EXTENSIONS})
        if p == ["metrics"]:
            self._need("GET")
            return self._send(200, d.metrics.render().encode(), {"Content-Type": METRICS_CONTENT_TYPE})
        if p == ["admin", "status"]:
            self._need("GET")
            return self._json(200, d.status())
        if p == ["admin", "reload"] or (p[:3] == ["v2", "repository", "models"] and len(p) == 5 and p[4] == "load"):
            self._need("POST")
            if len(p) == 5:
                self._model(p[3])
            return self._reload(body)
        if p == ["v2", "repository", "index"]:
            self._need("POST")
            return self._json(200, [{"name": d.model_name, "version": MODEL_VERSION,
                                     "state": "READY" if d.ready else "UNAVAILABLE", "reason": ""}])
        if len(p) >= 3 and p[:2] == ["v2", "models"]:
            rest = p[3:]
            if len(rest) >= 2 and rest[0] == "versions":
                if rest[1] != MODEL_VERSION:
                    raise HttpError(404, f"unknown version '{rest[1]}' of model '{p[2]}'; available: ['{MODEL_VERSION}']")
                rest = rest[2:]
            if rest == []:
                self._need("GET")
                self._model(p[2])
                return self._json(200, d.model_metadata())
            if rest == ["ready"]:
                self._need("GET")
                self._model(p[2])
                return self._json(200 if d.ready else 503, {"name": d.model_name, "ready": d.ready})
            if rest == ["infer"]:
                self._need("POST")
                self._model(p[2])
                return self._infer(body, arrival)
        raise HttpError(404, f"no such endpoint: {self.command} {self.path[:200]}")

    def _reload(self, body: bytes) -> None:
        path = None
        if body.strip():
            doc = _loads(body, "the reload request")
            if not isinstance(doc, dict):
                raise HttpError(400, "the reload request must be a JSON object like {\"table\": \"/path/selected.json\"}")
            path = doc.get("table")
            if path is not None and not isinstance(path, str):
                raise HttpError(400, "'table' must be a path string")
        ok, msg = self.daemon.reload(path)
        if not ok:
            raise HttpError(400, msg, body={"reloaded": False})
        self._json(200, {"reloaded": True, "message": msg, "variants": list(self.daemon.scheduler.state.selector.variants)})

    def _infer(self, body: bytes, arrival: float) -> None:
        d = self.daemon
        if d.draining:
            self.close_connection = True
            d.metrics.requests.inc(outcome="shutting_down")
            raise HttpError(503, "the daemon is shutting down; retry later", headers={"Retry-After": "1"})
        parsed = parse_infer(body, self.headers.get("Inference-Header-Content-Length"), d.input_hwc,
                             d.default_deadline_ms)
        req = InferenceRequest(image=parsed.image, deadline_ms=parsed.deadline_ms, arrival=arrival,
                               id=parsed.request_id or "")
        with d._inflight_lock:
            d.inflight += 1
        try:
            try:
                d.scheduler.submit(req)
            except QueueFull as exc:
                d.metrics.requests.inc(outcome="queue_full")
                raise HttpError(503, str(exc), headers={"Retry-After": "1"}) from None
            except ShuttingDown as exc:
                d.metrics.requests.inc(outcome="shutting_down")
                self.close_connection = True
                raise HttpError(503, str(exc), headers={"Retry-After": "1"}) from None
            res = req.wait()
            assert res is not None
            self._answer(req, res, parsed)
        finally:
            with d._inflight_lock:
                d.inflight -= 1

    def _answer(self, req: InferenceRequest, res: InferenceResult, parsed: ParsedInfer) -> None:
        d = self.daemon
        params: dict[str, Any] = {
            "variant": res.variant,
            "predicted_ms": _r(res.predicted_ms),
            "queue_ms": _r(res.queue_ms),
            "inference_ms": _r(res.inference_ms),
            "total_ms": 0.0,
            "deadline_ms": _r(req.deadline_ms),
            "deadline_met": False,
            "slowdown": _r(res.slowdown),
            "policy": res.policy,
        }
        seq = {"X-Edgekit-Dispatch-Seq": str(res.dispatch_seq)}
        if res.outcome == "rejected":
            d.metrics.requests.inc(outcome="rejected")
            params["total_ms"] = _r((time.perf_counter() - req.arrival) * 1000.0)
            raise HttpError(408, res.message, body={"error": res.message, "parameters": params}, headers=seq)
        if res.outcome != "ok":
            raise RuntimeError(res.message)
        total = (time.perf_counter() - req.arrival) * 1000.0
        met = total <= req.deadline_ms
        params["total_ms"] = _r(total)
        params["deadline_met"] = met
        data, headers = encode_infer_response(res, parsed.outputs, d.model_name, parsed.request_id, params)
        headers.update(seq)
        self._send(200, data, headers)
        m = d.metrics
        m.requests.inc(outcome="met" if met else "missed")
        if not met:
            m.misses.inc()
        m.variant.inc(variant=res.variant or "")
        m.latency.observe(total / 1000.0)
        m.queue_wait.observe(res.queue_ms / 1000.0)
        d.scheduler.record_overhead(total - res.queue_ms - res.inference_ms)


class EdgeHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def make_server(daemon: Daemon, host: str, port: int) -> EdgeHTTPServer:
    handler = type("BoundHandler", (Handler,), {"daemon": daemon})
    cls = EdgeHTTPServer
    if ":" in host:
        cls = type("EdgeHTTPServer6", (EdgeHTTPServer,), {"address_family": socket.AF_INET6})
    return cls((host, port), handler)


# ============================================================================ CLI


def _rss_mb() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / (1024 * 1024)
    except ImportError:
        try:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)
        except OSError:
            return float("nan")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", metavar="BUNDLE", help="bundle folder or .tar.gz")
    p.add_argument("--table", required=True, metavar="SELECTED.json", help="selected table from 'edgekit select'")
    p.add_argument("--profile", default=None, help="device profile (default: the bundle's)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 exposes it)")
    p.add_argument("--port", type=int, default=8000, help="port (0: pick a free one; the 'listening on' line says which)")
    p.add_argument("--policy", default="adaptive",
                   help="adaptive | quantile-table (alias oracle-free) | mean-table | most-accurate | fastest | static:<variant>")
    p.add_argument("--miss", default="best-effort", choices=MISS_POLICIES,
                   help="when no variant fits: run the fastest and flag the miss, or answer 408 at once")
    p.add_argument("--quantile", default=None, choices=QUANTILES,
                   help="table latency the selector predicts with (default: the one the table was selected on, p95)")
    p.add_argument("--queue-size", type=int, default=64, help="EDF queue bound; beyond it requests get 503")
    p.add_argument("--token", default=None, help="require 'Authorization: Bearer TOKEN' (default: $EDGEKIT_TOKEN if set)")
    p.add_argument("--max-body-mb", type=float, default=8.0, help="request size cap (413 above it)")
    p.add_argument("--model-name", default="edgekit", help="the logical model name clients ask for")
    p.add_argument("--workers", type=int, default=None, help="inference threads (default: the profile's workers)")
    p.add_argument("--filter", default="kalman", choices=sorted(FILTERS), help="online slowdown filter")
    p.add_argument("--default-deadline-ms", type=float, default=None,
                   help="deadline for requests without parameters.deadline_ms (default: such requests get 400)")
    p.add_argument("--inject-delay-ms", type=float, default=0.0,
                   help="testing: add this much time to every inference, as a slower board would")
    p.add_argument("--access-log", action="store_true", help="log every request to stderr")


def _check_args(args: argparse.Namespace) -> None:
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be 0..65535, got {args.port}")
    if args.queue_size < 1:
        raise ValueError(f"--queue-size must be at least 1, got {args.queue_size}")
    if not (args.max_body_mb > 0 and math.isfinite(args.max_body_mb)):
        raise ValueError(f"--max-body-mb must be > 0, got {args.max_body_mb}")
    if args.workers is not None and not 1 <= args.workers <= 64:
        raise ValueError(f"--workers must be 1..64, got {args.workers}")
    if args.default_deadline_ms is not None and not (0 < args.default_deadline_ms <= MAX_DEADLINE_MS):
        raise ValueError(f"--default-deadline-ms must be in (0, {MAX_DEADLINE_MS:g}]")
    if not (args.inject_delay_ms >= 0 and math.isfinite(args.inject_delay_ms)):
        raise ValueError("--inject-delay-ms must be >= 0")
    Policy.from_string(args.policy)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not (args.token or os.environ.get("EDGEKIT_TOKEN")):
        _log(f"warning: binding {args.host} without a token; anyone who can reach it may use it (set --token)")


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    try:
        daemon = Daemon(args)
    except TableError as exc:
        raise ValueError(str(exc)) from None
    for info in daemon.host.info.values():
        state = "ready" if info.ready else "NOT READY"
        _log(f"variant {info.variant} [{info.provider or '-'}]: {state}: {info.reason}")
    sel = daemon.scheduler.state.selector
    rss = _rss_mb()
    tf_loaded = any(m == "tensorflow" or m.startswith("tensorflow.") for m in sys.modules)
    print(f"loaded {len(sel)} variants x {daemon.workers} worker(s) in {daemon.load_s:.2f} s; "
          f"policy {sel.policy}, miss {sel.miss}, quantile {sel.quantile}", flush=True)
    print(f"resident memory with variants loaded: {rss:.1f} MB", flush=True)
    print(f"tensorflow in sys.modules: {'YES (unexpected)' if tf_loaded else 'no'}", flush=True)

    try:
        httpd = make_server(daemon, args.host, args.port)
    except OSError as exc:
        raise RuntimeError(f"cannot listen on {args.host}:{args.port}: {exc}") from None
    daemon.scheduler.start()
    host, port = httpd.server_address[:2]
    shown = f"[{host}]" if ":" in str(host) else host
    # Signal handlers only flip flags: taking a lock there (Event.set) can deadlock against
    # the main thread holding the same lock when the signal lands.
    flags = {"term": False, "hup": False}

    def on_stop(signum, frame):
        flags["term"] = True

    def on_hup(signum, frame):
        flags["hup"] = True

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, on_hup)
    server_thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                     name="edgekit-http", daemon=True)
    server_thread.start()
    print(f"listening on http://{shown}:{port}", flush=True)
    try:
        while not flags["term"]:
            time.sleep(0.05)
            if flags["hup"] and not flags["term"]:
                flags["hup"] = False
                daemon.reload()  # SIGHUP: re-read the table file; a bad one keeps the current table
    finally:
        _log("shutting down: no new requests; finishing queued work")
        daemon.draining = True
        httpd.shutdown()
        httpd.server_close()
        daemon.scheduler.close(drain=True, timeout=60)
        end = time.monotonic() + 10
        while daemon.inflight > 0 and time.monotonic() < end:
            time.sleep(0.01)
        m = daemon.metrics.requests
        _log("stopped; requests: " + ", ".join(
            f"{o}={int(m.value(outcome=o))}" for o in ("met", "missed", "rejected", "queue_full", "invalid")))
    return 0
