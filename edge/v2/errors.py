"""The one refusal error of the daemon, from the transport or the codec: an HTTP status, a message, headers, a body.

Domain errors (a full queue, a draining daemon) are mapped to it where the daemon serves.
"""

from __future__ import annotations

import json

JSON_SEPARATORS = (",", ":")  # compact JSON, as every v2 body is written


class ProtocolError(Exception):
    """A request the daemon must refuse: ``status`` (4xx/5xx), ``message``, extra response headers and body."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None, body: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.body = body


def encode_error(message: str, body: dict | None = None) -> bytes:
    """A JSON error body: ``body`` (if any) with ``"error": message`` added unless it already has one."""
    doc = dict(body) if body else {}
    doc.setdefault("error", message)
    return json.dumps(doc, separators=JSON_SEPARATORS).encode()
