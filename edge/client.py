"""A small Python client for the edgekit daemon: ``Client(url).classify(image, deadline_ms)``.

Speaks the Open Inference Protocol over one keep-alive HTTP/1.1 connection (stdlib only),
sending the image as a binary tensor by default.  One Client per thread: the connection
is not shared between threads.
"""

from __future__ import annotations

import http.client
import json
import socket
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class ClientError(RuntimeError):
    """The daemon answered with an error other than a deadline rejection (408) or a full queue (503)."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


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

    @property
    def ok(self) -> bool:
        return self.status == 200


def _f(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


class Connection:
    """One keep-alive HTTP/1.1 connection, reopened when the daemon closes it (shared by loadgen)."""

    def __init__(self, host: str, port: int, timeout: float = 30.0):
        self.host, self.port, self.timeout = host, port, timeout
        self._conn: http.client.HTTPConnection | None = None

    def _open(self) -> http.client.HTTPConnection:
        c = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        c.connect()
        # Small request bodies: don't let Nagle hold them back.
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return c

    def connect(self) -> None:
        """Open the connection now, so the first timed request does not pay for it."""
        if self._conn is None:
            try:
                self._conn = self._open()
            except OSError:
                self._conn = None  # the next request opens it again and raises the error

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """(status, lower-cased headers, body); retries once on a new connection if a kept-alive one was closed."""
        for attempt in (0, 1):
            fresh = self._conn is None
            if fresh:
                self._conn = self._open()
            try:
                self._conn.request(method, path, body=body, headers=headers or {})
                resp = self._conn.getresponse()
                data = resp.read()
                rh = {k.lower(): v for k, v in resp.getheaders()}
                if rh.get("connection", "").lower() == "close":
                    self.close()
                return resp.status, rh, data
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
                    http.client.CannotSendRequest, http.client.BadStatusLine):
                self.close()
                # A reused connection the daemon already closed: retry once on a new one.
                if fresh or attempt:
                    raise
            except Exception:
                self.close()
                raise
        raise ConnectionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except OSError:
                pass
            finally:
                self._conn = None

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Client:
    def __init__(self, url: str = "http://127.0.0.1:8000", model: str = "edgekit", token: str | None = None,
                 binary: bool = True, timeout: float = 30.0):
        u = urllib.parse.urlsplit(url if "://" in url else "http://" + url)
        if u.scheme not in ("http", ""):
            raise ValueError(f"only http:// URLs are supported, got {url!r} (put a TLS proxy in front for https)")
        if not u.hostname:
            raise ValueError(f"no host in URL {url!r}")
        self.host = u.hostname
        self.port = u.port or 80
        self.base = u.path.rstrip("/")
        self.model = model
        self.token = token
        self.binary = binary
        self.timeout = timeout
        self._conn = Connection(self.host, self.port, timeout)

    # ------------------------------------------------------------ transport

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body) for one request; reconnects once if the kept-alive connection was closed."""
        hdrs = dict(headers or {})
        if self.token:
            hdrs["Authorization"] = f"Bearer {self.token}"
        return self._conn.request(method, self.base + path, body, hdrs)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _get_json(self, path: str) -> tuple[int, Any]:
        status, _, data = self.request("GET", path)
        try:
            return status, json.loads(data) if data else None
        except ValueError:
            raise ClientError(status, f"answer is not JSON: {data[:100]!r}") from None

    # ------------------------------------------------------------ API

    def live(self) -> bool:
        return self._get_json("/v2/health/live")[0] == 200

    def ready(self) -> bool:
        return self._get_json("/v2/health/ready")[0] == 200

    def metadata(self) -> dict:
        status, doc = self._get_json(f"/v2/models/{urllib.parse.quote(self.model, safe='')}")
        if status != 200:
            raise ClientError(status, (doc or {}).get("error", "") if isinstance(doc, dict) else str(doc))
        return doc

    def reload(self, table: str | None = None) -> dict:
        body = json.dumps({"table": table}).encode() if table else b""
        status, _, data = self.request("POST", "/admin/reload", body, {"Content-Type": "application/json"})
        doc = json.loads(data) if data else {}
        if status != 200:
            raise ClientError(status, doc.get("error", ""))
        return doc

    def encode(self, image: np.ndarray, deadline_ms: float, request_id: str | None = None) -> tuple[bytes, dict[str, str]]:
        """The request body and headers ``classify`` sends (exposed for load generators)."""
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
        if self.binary:
            raw = np.ascontiguousarray(arr).tobytes()
            head["inputs"][0]["parameters"] = {"binary_data_size": len(raw)}
            head["parameters"]["binary_data_output"] = True
            js = json.dumps(head, separators=(",", ":")).encode()
            return js + raw, {"Inference-Header-Content-Length": str(len(js)), "Content-Type": "application/octet-stream"}
        head["inputs"][0]["data"] = arr.reshape(-1).tolist()
        return json.dumps(head, separators=(",", ":")).encode(), {"Content-Type": "application/json"}

    def classify(self, image: np.ndarray, deadline_ms: float, request_id: str | None = None) -> Classification:
        """Classify one uint8 (or 0..255 float) image with a relative deadline in ms."""
        body, headers = self.encode(image, deadline_ms, request_id)
        status, rh, data = self.request(
            "POST", f"/v2/models/{urllib.parse.quote(self.model, safe='')}/infer", body, headers
        )
        return decode_response(status, rh, data)


def split_binary(headers: dict[str, str], data: bytes) -> tuple[dict, bytes]:
    """(JSON header, the binary part) of a response that may use the binary tensor extension."""
    n = headers.get("inference-header-content-length")
    if n is None:
        return json.loads(data) if data else {}, b""
    k = int(n)
    return json.loads(data[:k]), data[k:]


def output_arrays(doc: dict, blob: bytes) -> dict[str, np.ndarray]:
    """Output tensors by name, JSON or binary (in the order the outputs are listed)."""
    dtypes = {"FP32": "<f4", "INT64": "<i8", "INT32": "<i4", "UINT8": "<u1", "FP16": "<f2", "FP64": "<f8"}
    out: dict[str, np.ndarray] = {}
    off = 0
    for o in doc.get("outputs", []):
        dt = np.dtype(dtypes.get(o.get("datatype"), "<f4"))
        shape = tuple(o.get("shape", (-1,)))
        size = (o.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            arr = np.frombuffer(blob, dtype=dt, count=int(size) // dt.itemsize, offset=off)
            off += int(size)
        else:
            arr = np.asarray(o.get("data", []), dtype=dt)
        out[o["name"]] = arr.reshape(shape) if arr.size == int(np.prod(shape)) else arr
    return out


def decode_response(status: int, headers: dict[str, str], data: bytes) -> Classification:
    try:
        doc, blob = split_binary(headers, data)
    except (ValueError, json.JSONDecodeError):
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
    )
