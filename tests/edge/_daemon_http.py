"""Shared by the daemon tests (test_app.py: requests; test_server.py: the process): fixtures and HTTP helpers."""

from __future__ import annotations

import http.client
import json

import numpy as np

H, W, C = 28, 28, 1




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


VALID = infer_doc()  # a well-formed request that the malformed ones start from
