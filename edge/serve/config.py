"""What ``edgekit serve`` was asked for: the frozen ``ServeConfig``, built and checked from the command line."""

from __future__ import annotations

import argparse
import math
import os
import stat
from dataclasses import dataclass

from edge.core.errors import UsageError
from edge.runtime.classifier import RuntimeOptions
from edge.runtime.selector import Policy
from edge.serve.http.connection import TransportLimits
from edge.serve.http.spin import check_spin_us
from edge.serve.log import log
from edge.v2.codec import MAX_DEADLINE_MS

MB = 1 << 20
MAX_TOKEN_FILE = 4096
# The default cap on request bytes buffered across all connections: a share of the board's
# memory, so that a flood of large bodies cannot take what the models need; never more than
# 512 MiB (64 bodies of the default 8 MiB cap: a bigger board gains nothing by holding more
# requests than it can serve before their deadlines), and never less than two of the largest
# bodies (one being read while one is served).
BUFFERED_MEMORY_SHARE = 8  # 1/8 of MemTotal
BUFFERED_CAP_BYTES = 512 * MB
BUFFERED_BODIES = 2


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``edgekit serve`` was asked for, checked."""

    bundle: str
    table: str
    profile: str | None
    host: str
    port: int
    model_name: str
    token: str | None
    default_deadline_ms: float | None
    drain_timeout_s: float
    access_log: bool
    runtime: RuntimeOptions
    limits: TransportLimits


def memory_total_bytes() -> int:
    """The board's physical memory (MemTotal) in bytes."""
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:  # the runtime extra brings psutil; without it ask the C library
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def default_max_buffered_bytes(max_body_bytes: int, memory_bytes: int | None = None) -> int:
    """1/8 of the board's memory, at most 512 MiB, and at least two bodies of ``max_body_bytes``."""
    share = (memory_total_bytes() if memory_bytes is None else memory_bytes) // BUFFERED_MEMORY_SHARE
    return max(BUFFERED_BODIES * max_body_bytes, min(share, BUFFERED_CAP_BYTES))


def read_token_file(path: str) -> str:
    """The token in ``path``: a regular file of at most MAX_TOKEN_FILE bytes, surrounding white space dropped."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise UsageError(f"--token-file {path}: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UsageError(f"--token-file {path} is not a regular file")
        data = os.read(fd, MAX_TOKEN_FILE + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_TOKEN_FILE:
        raise UsageError(f"--token-file {path} is over {MAX_TOKEN_FILE} bytes; it should hold just the token")
    tok = data.decode("utf-8", "replace").strip()
    if not tok:
        raise UsageError(f"--token-file {path} is empty")
    return tok


def _token(args: argparse.Namespace) -> str | None:
    if args.token_file:
        return read_token_file(args.token_file)
    if args.token:
        log("warning: --token shows in 'ps'; prefer --token-file or the EDGEKIT_TOKEN environment variable")
        return str(args.token)
    return os.environ.get("EDGEKIT_TOKEN") or None


def _max_buffered_bytes(args: argparse.Namespace, max_body_bytes: int) -> int:
    mb = args.max_buffered_mb
    if mb is None:
        return default_max_buffered_bytes(max_body_bytes)
    if not (mb > 0 and math.isfinite(mb)):
        raise UsageError(f"--max-buffered-mb must be > 0, got {mb}")
    n = int(mb * MB)
    if n < max_body_bytes:
        raise UsageError(f"--max-buffered-mb ({mb:g}) must be at least --max-body-mb ({args.max_body_mb:g}): "
                         f"one request of the largest size must fit; raise it or lower --max-body-mb")
    return n


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    """The checked configuration of ``edgekit serve``'s parsed command line (UsageError names the bad option)."""
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be 0..65535, got {args.port}")
    if not (args.max_body_mb > 0 and math.isfinite(args.max_body_mb)):
        raise UsageError(f"--max-body-mb must be > 0, got {args.max_body_mb}")
    if args.default_deadline_ms is not None and not (0 < args.default_deadline_ms <= MAX_DEADLINE_MS):
        raise UsageError(f"--default-deadline-ms must be in (0, {MAX_DEADLINE_MS:g}]")
    if not (0 < args.drain_timeout <= 3600):
        raise UsageError("--drain-timeout must be in (0, 3600] seconds")
    if not (args.inject_delay_ms >= 0 and math.isfinite(args.inject_delay_ms)):
        raise UsageError("--inject-delay-ms must be >= 0")
    check_spin_us(args.spin_us, "--spin-us")
    max_body = int(args.max_body_mb * MB)
    max_buffered = _max_buffered_bytes(args, max_body)
    token = _token(args)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not token:
        log(f"warning: binding {args.host} without a token; anyone who can reach it may use it (set --token-file)")
    runtime = RuntimeOptions(policy=Policy.from_string(args.policy), miss=args.miss, quantile=args.quantile,
                             slowdown_filter=args.filter, queue_size=args.queue_size, workers=args.workers,
                             inject_delay_ms=args.inject_delay_ms, on_drift=args.on_drift,
                             drift_margin=args.drift_margin)
    limits = TransportLimits(max_connections=args.max_connections, max_body_bytes=max_body,
                             max_buffered_bytes=max_buffered,
                             header_timeout_s=args.header_timeout, body_timeout_s=args.body_timeout,
                             idle_timeout_s=args.idle_timeout, spin_us=args.spin_us)
    return ServeConfig(bundle=str(args.bundle), table=str(args.table), profile=args.profile, host=args.host,
                       port=args.port, model_name=args.model_name, token=token,
                       default_deadline_ms=args.default_deadline_ms, drain_timeout_s=float(args.drain_timeout),
                       access_log=bool(args.access_log), runtime=runtime, limits=limits)
