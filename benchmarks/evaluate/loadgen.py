"""`edgekit loadgen`: send a seeded deadline workload of real labeled images to a running daemon."""

from __future__ import annotations

import argparse
import contextlib
import http.client
import ipaddress
import os
import queue
import threading
import time
import urllib.parse
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

from benchmarks.evaluate.workload import MAX_COUNT, Workload, WorkloadError, make_workload
from edge.core.atomic import atomic_write_json
from edge.core.errors import StepFailed, UsageError
from edge.v2.client import ClientConnection
from edge.v2.client_codec import RequestEncoder, summarize_infer_response

DEFAULT_COUNT = 200
DEFAULT_DURATION_S = 120.0
MAX_DURATION_S = 3600.0
MAX_WORKERS = 64


# ----------------------------------------------------------------------------- URL checks


def parse_url(url: str, allow_remote: bool = False) -> tuple[str, int, str]:
    """(host, port, base path) of an http:// daemon URL; non-loopback hosts need ``allow_remote``."""
    u = urllib.parse.urlsplit(url)
    if u.scheme != "http":
        raise UsageError(f"daemon URL must start with http:// (got '{url}'); e.g. http://127.0.0.1:8000")
    if not u.hostname:
        raise UsageError(f"daemon URL '{url}' has no host; e.g. http://127.0.0.1:8000")
    host = u.hostname
    if not allow_remote and not is_loopback(host):
        raise UsageError(
            f"refusing to send a load test to non-loopback host '{host}'; "
            "point it at 127.0.0.1/localhost or pass --allow-remote if you own that daemon"
        )
    try:
        port = u.port or 80
    except ValueError:
        raise UsageError(f"daemon URL '{url}' has a bad port") from None
    return host, port, u.path.rstrip("/")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ----------------------------------------------------------------------------- records


@dataclass
class RequestRecord:
    """One request as the load generator saw it. Times in ms; arrival/sent in s from the start."""

    index: int
    image_index: int
    label: int
    deadline_ms: float
    arrival_s: float  # scheduled arrival (Poisson) or actual send time (closed loop)
    sent_s: float
    e2e_ms: float  # from the scheduled arrival (or the send, closed loop) to the parsed answer
    status: int  # HTTP status; 0 = no answer (connection error, timeout)
    pred: int = -1
    correct: bool = False
    deadline_met: bool = False  # answered with 200 and e2e_ms <= deadline_ms
    server_deadline_met: bool | None = None  # as the daemon judged it (from its own clock)
    variant: str = ""
    predicted_ms: float | None = None
    queue_ms: float | None = None
    inference_ms: float | None = None
    total_ms: float | None = None
    slowdown: float | None = None
    policy: str = ""
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("arrival_s", "sent_s"):
            d[k] = round(d[k], 6)
        for k in ("deadline_ms", "e2e_ms", "predicted_ms", "queue_ms", "inference_ms", "total_ms", "slowdown"):
            if d[k] is not None:
                d[k] = round(float(d[k]), 4)
        return d


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


# The v2 codec lives in edge.v2.codec (daemon side) and edge.v2.client_codec (client side);
# RequestEncoder and parse_response stay importable from here.
parse_response = summarize_infer_response


# ----------------------------------------------------------------------------- HTTP


def wait_ready(url: str, timeout_s: float = 30.0, allow_remote: bool = False) -> None:
    """Poll GET /v2/health/ready until the daemon answers 200 (or raise RuntimeError)."""
    host, port, base = parse_url(url, allow_remote)
    end = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < end:
        c = ClientConnection(host, port, 5.0)
        try:
            status, _, body = c.request("GET", base + "/v2/health/ready")
            if status == 200:
                return
            last = f"HTTP {status} {body[:100]!r}"
        except OSError as exc:
            last = str(exc)
        finally:
            c.close()
        time.sleep(0.1)
    raise StepFailed(f"daemon at {url} is not ready after {timeout_s:g} s ({last}); is 'edgekit serve' running?")


# ----------------------------------------------------------------------------- the run

PR_SET_TIMERSLACK, PR_GET_TIMERSLACK = 29, 30  # linux/prctl.h


@contextlib.contextmanager
def fine_timer_slack(ns: int = 1000):
    """Linux: this thread's timer slack at ``ns`` for the block (the default 50 us lets ``time.sleep`` wake up to
    50 us late, which an open-loop dispatcher would add to every request's latency); elsewhere nothing."""
    libc = None
    old = 0
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        old = int(libc.prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0))
        if old <= 0 or libc.prctl(PR_SET_TIMERSLACK, int(ns), 0, 0, 0) != 0:
            libc = None
    except (OSError, AttributeError):
        libc = None
    try:
        yield
    finally:
        if libc is not None:
            libc.prctl(PR_SET_TIMERSLACK, old, 0, 0, 0)



@dataclass
class LoadResult:
    records: list[RequestRecord]
    wall_s: float
    truncated: bool  # stopped by the duration bound before every request was sent
    workload: Workload

    def summary(self) -> dict[str, Any]:
        return summarize(self.records, self.wall_s)


def on_time_and_correct(r: RequestRecord) -> bool:
    """Answered (200), correct, and within its deadline: on the daemon's clock where it said, else end to end."""
    met = r.server_deadline_met if r.server_deadline_met is not None else r.deadline_met
    return r.status == 200 and r.correct and bool(met)


def summarize(records: list[RequestRecord], wall_s: float) -> dict[str, Any]:
    n = len(records)
    ok = [r for r in records if r.status == 200]
    e2e = np.asarray([r.e2e_ms for r in ok], dtype=np.float64)
    variants: dict[str, int] = {}
    for r in ok:
        variants[r.variant] = variants.get(r.variant, 0) + 1
    sd = [r.server_deadline_met for r in records if r.server_deadline_met is not None]
    n_correct = sum(r.correct for r in records)
    on_time = sum(1 for r in records if on_time_and_correct(r))

    def q(p: float) -> float | None:
        return None if e2e.size == 0 else round(float(np.percentile(e2e, p)), 3)

    return {
        "count": n,
        "answered": len(ok),
        "rejected": sum(1 for r in records if r.status == 408),
        "overloaded": sum(1 for r in records if r.status == 503),
        "errors": sum(1 for r in records if r.status not in (200, 408, 503)),
        # The headline figure: the share of all requests answered correctly and on time.
        "on_time_accuracy": None if n == 0 else round(on_time / n, 4),
        "accuracy": None if n == 0 else round(n_correct / n, 4),
        # Of the answers only (a rejected or failed request has none): the y axis of the accuracy-miss plane.
        "answer_accuracy": None if not ok else round(sum(r.correct for r in ok) / len(ok), 4),
        "miss_rate": None if n == 0 else round(sum(not r.deadline_met for r in records) / n, 4),
        "server_miss_rate": None if not sd else round(sum(not m for m in sd) / len(sd), 4),
        "p50_ms": q(50),
        "p90_ms": q(90),
        "p99_ms": q(99),
        "mean_ms": None if e2e.size == 0 else round(float(e2e.mean()), 3),
        "throughput_rps": None if wall_s <= 0 else round(len(ok) / wall_s, 2),
        # Answers that are correct and on time, per second (on the daemon's clock where it said).
        "goodput_rps": None if wall_s <= 0 else round(on_time / wall_s, 2),
        "wall_s": round(wall_s, 3),
        "variants": dict(sorted(variants.items(), key=lambda kv: -kv[1])),
    }


def _one(
    conn: ClientConnection,
    path: str,
    headers: dict[str, str],
    enc: RequestEncoder,
    wl: Workload,
    labels: np.ndarray,
    i: int,
    t0: float,
    scheduled: float | None,
) -> RequestRecord:
    img = int(wl.image_indices[i])
    deadline = float(wl.deadlines_ms[i])
    body, content = enc.request(img, deadline, i)
    hdrs = {**headers, **content}
    sent = time.perf_counter()
    start = sent if scheduled is None else t0 + scheduled
    status, rh, data, err = 0, {}, b"", ""
    try:
        status, rh, data = conn.request("POST", path, body, hdrs)
    except (OSError, http.client.HTTPException) as exc:
        err = f"{type(exc).__name__}: {exc}"
    done = time.perf_counter()
    e2e = (done - start) * 1000.0
    rec = RequestRecord(
        index=i,
        image_index=img,
        label=int(labels[img]),
        deadline_ms=deadline,
        arrival_s=(sent - t0) if scheduled is None else scheduled,
        sent_s=sent - t0,
        e2e_ms=e2e,
        status=status,
        error=err,
    )
    if status:
        parsed = summarize_infer_response(status, data, rh)
        p = parsed["params"]
        rec.pred = parsed["pred"]
        rec.error = parsed["error"]
        rec.correct = status == 200 and rec.pred == rec.label
        rec.deadline_met = status == 200 and e2e <= deadline
        sdm = p.get("deadline_met")
        rec.server_deadline_met = bool(sdm) if isinstance(sdm, bool) else None
        rec.variant = str(p.get("variant", "") or "")
        rec.policy = str(p.get("policy", "") or "")
        for k in ("predicted_ms", "queue_ms", "inference_ms", "total_ms", "slowdown"):
            setattr(rec, k, _num(p.get(k)))
    return rec


def _target(url: str, images: np.ndarray, workload: Workload, model: str, token: str | None, allow_remote: bool,
            binary: bool) -> tuple[str, int, str, dict[str, str], RequestEncoder]:
    """(host, port, infer path, headers, encoder) for sending ``workload``'s requests to the daemon at ``url``."""
    host, port, base = parse_url(url, allow_remote)
    if images.shape[0] != workload.n_images:
        raise UsageError(
            f"the workload was drawn for {workload.n_images} eval images but the set has {images.shape[0]}"
        )
    path = f"{base}/v2/models/{urllib.parse.quote(model, safe='')}/infer"
    headers = {"Connection": "keep-alive"}  # the encoder adds the content headers
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return host, port, path, headers, RequestEncoder(images, workload.image_indices, binary=binary)


class ClosedLoopClient:
    """One keep-alive connection to a daemon sending ``workload``'s requests one at a time: ``send(i, t0)`` sends
    request ``i`` and returns its record, its times from ``t0`` (perf_counter seconds). ``run_load``'s closed loop,
    and one daemon's side when the policies take turns (``benchmarks.evaluate.turns``)."""

    def __init__(self, url: str, images: np.ndarray, labels: np.ndarray, workload: Workload, *,
                 model: str = "edgekit", token: str | None = None, allow_remote: bool = False, timeout_s: float = 30.0,
                 binary: bool = False):
        host, port, self.path, self.headers, self.enc = _target(url, images, workload, model, token, allow_remote,
                                                                binary)
        self.workload, self.labels = workload, np.asarray(labels)
        self.conn = ClientConnection(host, port, timeout_s)
        self.conn.connect()

    def send(self, i: int, t0: float) -> RequestRecord:
        return _one(self.conn, self.path, self.headers, self.enc, self.workload, self.labels, i, t0, None)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "ClosedLoopClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_load(
    url: str,
    images: np.ndarray,
    labels: np.ndarray,
    workload: Workload,
    *,
    model: str = "edgekit",
    token: str | None = None,
    duration_s: float = DEFAULT_DURATION_S,
    allow_remote: bool = False,
    workers: int = 16,
    timeout_s: float = 30.0,
    on_request: Callable[[int], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    binary: bool = False,
) -> LoadResult:
    """Send ``workload`` to the daemon at ``url``; stop issuing after ``duration_s`` seconds.

    Closed loop: one request at a time on one keep-alive connection. Poisson: requests are
    issued at their scheduled arrival times by a pool of ``workers`` connections, and the
    end-to-end latency counts from the scheduled arrival (as LoadGen's Server scenario does),
    so a late client or a full daemon queue shows up in the latency, not hidden.
    ``on_request(i)`` runs just before request ``i`` is issued (used to switch contention).
    ``binary`` sends the images with the binary tensor data extension instead of JSON.
    """
    if not 0 < duration_s <= MAX_DURATION_S:
        raise UsageError(f"--duration must be in (0, {MAX_DURATION_S:g}] seconds, got {duration_s:g}")
    n = workload.count
    records: list[RequestRecord] = []
    truncated = False

    if workload.closed:
        with ClosedLoopClient(url, images, labels, workload, model=model, token=token, allow_remote=allow_remote,
                              timeout_s=timeout_s, binary=binary) as client:
            t0 = time.perf_counter()
            deadline_t = t0 + duration_s
            for i in range(n):
                if time.perf_counter() >= deadline_t:
                    truncated = True
                    break
                if on_request is not None:
                    on_request(i)
                records.append(client.send(i, t0))
                if progress is not None:
                    progress(i + 1, n)
        return LoadResult(records, time.perf_counter() - t0, truncated, workload.head(len(records)))

    with OpenLoopClient(url, images, labels, workload, model=model, token=token, allow_remote=allow_remote,
                        timeout_s=timeout_s, binary=binary, workers=workers, progress=progress) as client:
        t0 = time.perf_counter()
        records, issued = client.serve(0, n, t0, end=t0 + duration_s, on_request=on_request)
    return LoadResult(records, time.perf_counter() - t0, issued < n, workload.head(issued))


class OpenLoopClient:
    """A pool of ``workers`` keep-alive connections to a daemon, each on its own sender thread, all connected
    before the first request: ``serve(start, stop, t0)`` issues requests [start, stop) of the Poisson
    ``workload`` at their scheduled arrivals (``t0`` + arrival, perf_counter seconds; at once when already past),
    waits for every answer and returns their records, latencies counted from the scheduled arrival (as LoadGen's
    Server scenario does), so a late client or a full daemon queue shows up in the latency, not hidden.
    ``run_load``'s open loop serves one span, the whole workload; a trial of open-loop turns through the daemon
    served one span per turn (``benchmarks.evaluate.turns`` says why it was dropped)."""

    def __init__(self, url: str, images: np.ndarray, labels: np.ndarray, workload: Workload, *,
                 model: str = "edgekit", token: str | None = None, allow_remote: bool = False, timeout_s: float = 30.0,
                 binary: bool = False, workers: int = 16, progress: Callable[[int, int], None] | None = None):
        if workload.arrivals_s is None:
            raise UsageError("an open-loop client needs a workload with arrival times (poisson:RATE), got closed")
        host, port, path, headers, enc = _target(url, images, workload, model, token, allow_remote, binary)
        self.workload, self.timeout_s, self.progress = workload, timeout_s, progress
        self._arrivals = workload.arrivals_s
        labels = np.asarray(labels)
        n = workload.count
        self._work: queue.Queue = queue.Queue()
        self._cond = threading.Condition()
        self._records: list[RequestRecord] = []
        self._done = 0  # answers in all, for progress
        nworkers = max(1, min(int(workers), MAX_WORKERS, n))
        ready = threading.Barrier(nworkers + 1)

        def sender() -> None:
            conn = ClientConnection(host, port, timeout_s)
            conn.connect()
            try:
                ready.wait(timeout=timeout_s)
            except threading.BrokenBarrierError:
                pass
            try:
                while True:
                    item = self._work.get()
                    if item is None:
                        return
                    i, sched, t0 = item
                    try:
                        rec = _one(conn, path, headers, enc, workload, labels, i, t0, sched)
                    except Exception as exc:  # noqa: BLE001 - an answer it cannot read is recorded, not lost
                        img = int(workload.image_indices[i])
                        rec = RequestRecord(index=i, image_index=img, label=int(labels[img]),
                                            deadline_ms=float(workload.deadlines_ms[i]), arrival_s=sched,
                                            sent_s=time.perf_counter() - t0, e2e_ms=0.0, status=0,
                                            error=f"{type(exc).__name__}: {exc}")
                    with self._cond:
                        self._records.append(rec)
                        self._done += 1
                        done = self._done
                        self._cond.notify_all()
                    if self.progress is not None:
                        self.progress(done, n)
            finally:
                conn.close()

        self._threads = [threading.Thread(target=sender, name=f"loadgen-{k}", daemon=True) for k in range(nworkers)]
        for t in self._threads:
            t.start()
        try:
            ready.wait(timeout=timeout_s)
        except threading.BrokenBarrierError:
            pass

    def serve(self, start: int, stop: int, t0: float, end: float | None = None,
              on_request: Callable[[int], None] | None = None) -> tuple[list[RequestRecord], int]:
        """Issue requests [start, stop) at ``t0`` + their arrival, none scheduled at or after ``end``; wait for
        their answers. Returns their records in request order and how many were issued. ``on_request(i)`` runs just
        before request ``i`` is issued (used to switch contention)."""
        arrivals = self._arrivals
        assert arrivals is not None
        with self._cond:
            self._records = []
        issued = 0
        with fine_timer_slack():
            for i in range(start, stop):
                at = t0 + float(arrivals[i])
                if end is not None and at >= end:
                    break
                wait = at - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                if on_request is not None:
                    on_request(i)
                self._work.put((i, float(arrivals[i]), t0))
                issued += 1
        # Every request is answered or fails by its connection's timeout; a sender that died cannot answer.
        with self._cond:
            while not self._cond.wait_for(lambda: len(self._records) >= issued, timeout=1.0):
                if not any(t.is_alive() for t in self._threads):
                    break
            records, self._records = self._records, []
        records.sort(key=lambda r: r.index)
        return records, issued

    def close(self) -> None:
        for _ in self._threads:
            self._work.put(None)
        for t in self._threads:
            t.join(timeout=self.timeout_s + 5)

    def __enter__(self) -> "OpenLoopClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ----------------------------------------------------------------------------- bundle eval set


def load_eval_set(bundle: str, part: str | None = "serve") -> tuple[np.ndarray, np.ndarray, Any]:
    """(images uint8 NHWC, labels int64, Bundle) from the bundle's evaluation set: by default its
    ``serve`` half, disjoint from the ``select`` half the benchmark measured accuracy on."""
    from edge.bundle.reader import open_bundle

    b = open_bundle(bundle)
    images, labels = b.eval_set(part=part)
    images = np.asarray(images)
    labels = np.asarray(labels).astype(np.int64)
    if images.shape[0] == 0:
        raise UsageError(f"bundle {bundle} has an empty evaluation set; rebuild it with 'edgekit bundle'")
    if images.dtype != np.uint8:
        raise UsageError(f"bundle {bundle}: eval images must be uint8, got {images.dtype}")
    return images, labels, b


def format_summary(s: dict[str, Any]) -> str:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v * 100:.2f}%"

    tput = "-" if s["throughput_rps"] is None else f"{s['throughput_rps']:.1f}"
    lines = [
        f"requests {s['count']}  answered {s['answered']}  rejected(408) {s['rejected']}  "
        f"overloaded(503) {s['overloaded']}  errors {s['errors']}",
        f"on-time accuracy {pct(s['on_time_accuracy'])} (correct and on time, of all requests)",
        f"accuracy {pct(s['accuracy'])}  deadline misses {pct(s['miss_rate'])} end to end "
        f"({pct(s['server_miss_rate'])} by the daemon's own clock)",
        f"latency p50 {ms(s['p50_ms'])} ms  p90 {ms(s['p90_ms'])} ms  p99 {ms(s['p99_ms'])} ms  "
        f"throughput {tput} req/s over {s['wall_s']:.1f} s",
        "variants used: " + (", ".join(f"{v} x{c}" for v, c in s["variants"].items()) or "none"),
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", metavar="URL", help="daemon base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--bundle", required=True, help="bundle folder or .tar.gz whose eval set supplies the images")
    p.add_argument("--count", type=int, default=DEFAULT_COUNT,
                   help=f"requests to send (default {DEFAULT_COUNT}, max {MAX_COUNT})")
    p.add_argument(
        "--duration", type=float, default=DEFAULT_DURATION_S,
        help=f"stop issuing requests after this many seconds (default {DEFAULT_DURATION_S:g}, max {MAX_DURATION_S:g})",
    )
    p.add_argument("--deadline", default="uniform:2:20",
                   help="fixed:MS | uniform:LO:HI | trace:FILE (ms, relative; default uniform:2:20)")
    p.add_argument("--arrival", default="closed", help="closed (one at a time) | poisson:RATE (requests/s)")
    p.add_argument("--seed", type=int, default=0, help="workload seed: same seed, same images/deadlines/arrivals")
    p.add_argument("--model", default="edgekit", help="logical model name served by the daemon")
    p.add_argument("--token", default=os.environ.get("EDGEKIT_TOKEN"),
                   help="bearer token if the daemon requires one (default: $EDGEKIT_TOKEN if set)")
    p.add_argument("--workers", type=int, default=16, help="concurrent connections for Poisson arrivals (default 16)")
    p.add_argument("--timeout", type=float, default=30.0, help="per-request timeout in seconds")
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback daemon URL")
    p.add_argument("--binary", action="store_true",
                   help="send images with the binary tensor data extension instead of JSON")
    p.add_argument("--out", default=None, help="write every request and the summary to this JSON file")


def run(args: argparse.Namespace) -> int:
    parse_url(args.url, args.allow_remote)  # refuse early, before loading anything
    if not 1 <= args.count <= MAX_COUNT:
        raise UsageError(f"--count must be in [1, {MAX_COUNT}], got {args.count}")
    images, labels, _ = load_eval_set(args.bundle)
    try:
        wl = make_workload(images.shape[0], args.count, args.deadline, args.arrival, args.seed)
    except WorkloadError as exc:
        raise UsageError(str(exc)) from None
    wait_ready(args.url, timeout_s=10.0, allow_remote=args.allow_remote)
    print(f"loadgen: {wl.count} requests, deadlines {wl.deadline} ms, arrivals {wl.arrival}, seed {wl.seed} "
          f"-> {args.url}", flush=True)
    res = run_load(
        args.url, images, labels, wl,
        model=args.model, token=args.token, duration_s=args.duration,
        allow_remote=args.allow_remote, workers=args.workers, timeout_s=args.timeout,
        binary=getattr(args, "binary", False),
    )
    s = res.summary()
    if res.truncated:
        print(f"loadgen: stopped by --duration {args.duration:g} s after {len(res.records)} of {wl.count} requests")
    print(format_summary(s))
    if args.out:
        atomic_write_json(args.out, {
            "url": args.url,
            "bundle": str(args.bundle),
            "model": args.model,
            "truncated": res.truncated,
            "workload": wl.to_dict(),
            "summary": s,
            "records": [r.to_dict() for r in res.records],
        })
        print(f"loadgen: wrote {args.out}")
    return 0 if s["answered"] else 1
