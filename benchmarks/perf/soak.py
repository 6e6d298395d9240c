"""Soak the daemon: 8 keep-alive clients at saturation with 1,000 idle connections open, for 10 minutes (bounded);
then flood it with request bodies that never finish and check that its memory stays under its buffer cap.

    .venv/bin/python -m benchmarks.perf.soak BUNDLE --table SELECTED.json [--profile P] [--seconds 600]
                                        [--clients 8] [--idle 1000] [--phase all|soak|flood]
                                        [--flood-rounds 10] [--flood-connections 64] [--flood-cap-mb 64]

The daemon runs with ``--miss reject`` and a small queue so that every answer kind occurs:
200 (served), 408 (deadline cannot be met) and 503 (queue full); deadlines are drawn
uniformly between 0.01 ms and 3x the slowest variant's p95. Anything else, a 5xx or a
connection error, is a failure. Every minute and at the end it prints requests sent and
answered by status, the daemon's resident memory (growth from the first minute to the
end must stay within 5 %), threads and open file descriptors. Loopback only; the run stops
by itself after ``--seconds``.

The body flood (``--phase flood`` runs it alone, in about a minute) starts a fresh daemon with
``--max-buffered-mb`` set to ``--flood-cap-mb``; each round opens 64 connections that each
announce an 8 MiB body (the default body cap), send all of it but the last byte, hold for 2 s
and close; 10 rounds. It prints the daemon's resident memory before, at its peak (the
kernel's VmHWM, reset before the flood) and after, and two goals: peak <= (start + cap) x 1.10,
and after within 5 % of start. Every send has a timeout and every round its bounds.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import resource
import socket
import sys
import threading
import time
from pathlib import Path

from benchmarks.evaluate.daemon_proc import Daemon
from edge.core.memory import rss_mb

GOAL_RSS_GROWTH = 0.05
ALLOWED = (200, 408, 503)
START_TIMEOUT_S = 120.0
PHASES = ("all", "soak", "flood")
FLOOD_BODY_BYTES = 8 << 20  # announced: the daemon's default --max-body-mb; one byte less is sent
FLOOD_HOLD_S = 2.0
FLOOD_CAP_MB = 64.0
GOAL_FLOOD_PEAK = 0.10  # peak RSS <= (start + cap) x 1.10
GOAL_FLOOD_AFTER = 0.05  # RSS after the flood within 5 % of the start
FLOOD_SEND_TIMEOUT_S = 30.0  # one connection's send; the daemon refuses or reads far faster
FLOOD_SETTLE_S = 2.0  # after the last round, before "after" is read


def _proc_stats(pid: int) -> dict:
    rss = rss_mb(pid)
    threads = 0
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("Threads:"):
                threads = int(line.split()[1])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return {"rss_mb": rss, "threads": threads, "fds": fds}


def run(bundle: str, table: str, profile: str | None, seconds: float, clients: int, idle: int, say=print) -> dict:
    from benchmarks.evaluate.placement import client_side, place
    from edge.bundle.reader import open_bundle
    from edge.tables.table import SelectedTable

    b = open_bundle(bundle, verify=True)
    images, _ = b.eval_set(limit=32)
    sel = SelectedTable.load(table)
    hi = 3 * max(r.p95_ms for r in sel.rows)
    with client_side(place()) as p:
        server_cpus = None if p.server is None else set(p.server)
        return _soak(bundle, table, profile, seconds, clients, idle, say, hi, images, server_cpus)


def _soak(bundle, table, profile, seconds, clients, idle, say, hi, images, server_cpus) -> dict:
    import tempfile

    from edge.v2.client import ClientConnection
    from edge.v2.client_codec import encode_infer_request

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = idle + clients + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    argv = [sys.executable, "-m", "edgekit.cli", "serve", bundle, "--table", table, "--port", "0",
            "--miss", "reject", "--queue-size", "4", "--max-connections", str(idle + clients + 64),
            "--idle-timeout", str(int(seconds) + 120)]
    if profile:
        argv += ["--profile", profile]
    # The daemon gets enough descriptors for the idle connections (a board's default 1024 would
    # make it shed them instead, which tests/edge/serve/http/test_listener.py covers).
    proc = Daemon(argv, Path(tempfile.mkdtemp(prefix="edgekit-soak-")) / "daemon.log", START_TIMEOUT_S,
                  cpus=server_cpus, nofile=idle + clients + 512)
    proc.start()
    host, port_i = proc.host, proc.port
    assert proc.proc is not None
    pid = proc.proc.pid
    idle_socks = []
    for _ in range(idle):
        idle_socks.append(socket.create_connection((host, port_i), timeout=10))
    counts: collections.Counter = collections.Counter()
    errors: collections.Counter = collections.Counter()
    stop = threading.Event()
    lock = threading.Lock()
    bodies = [[encode_infer_request(images[i: i + 1], dl, binary=True) for i in range(len(images))]
              for dl in [0.01 + (hi - 0.01) * k / 15 for k in range(16)]]
    path = "/v2/models/edgekit/infer"

    def client(seed: int) -> None:
        rng = random.Random(seed)
        c = ClientConnection(host, port_i, timeout=30)
        local: collections.Counter = collections.Counter()
        while not stop.is_set():
            body, hdrs = rng.choice(bodies)[rng.randrange(len(images))]
            try:
                status, _, _ = c.request("POST", path, body, hdrs)
                local[status] += 1
            except OSError as exc:
                with lock:
                    errors[type(exc).__name__] += 1
                c.close()
            if len(local) and sum(local.values()) >= 200:
                with lock:
                    counts.update(local)
                local.clear()
        with lock:
            counts.update(local)
        c.close()

    say(f"soak: {clients} clients at saturation, {idle} idle connections, {seconds:g} s; "
        f"daemon pid {pid} ({'cpu ' + str(sorted(server_cpus)) if server_cpus else 'shared core'}), "
        f"deadlines 0.01..{hi:.3f} ms, --miss reject --queue-size 4")
    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    samples = []
    first = None
    try:
        while time.monotonic() - t0 < seconds:
            time.sleep(min(60.0, max(0.0, seconds - (time.monotonic() - t0))))
            st = _proc_stats(pid)
            with lock:
                total = sum(counts.values())
                snap = dict(counts)
            st.update(t=time.monotonic() - t0, answered=total, by_status=snap)
            samples.append(st)
            if first is None:
                first = st
            say(f"  t={st['t']:6.0f} s  answered {total:>9}  {snap}  rss {st['rss_mb']:.1f} MB  "
                f"threads {st['threads']}  fds {st['fds']}")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        try:
            c = ClientConnection(host, port_i, timeout=10)
            _, _, data = c.request("GET", "/admin/status")
            status = json.loads(data)
            c.close()
        except OSError:
            status = {}
        end = _proc_stats(pid)
        for s in idle_socks:
            s.close()
        proc.stop()
    total = sum(counts.values())
    bad = {k: v for k, v in counts.items() if k not in ALLOWED}
    growth = (end["rss_mb"] - first["rss_mb"]) / first["rss_mb"] if first else float("nan")
    return {"seconds": seconds, "answered": total, "by_status": dict(counts), "errors": dict(errors),
            "bad_status": bad, "five_xx": sum(v for k, v in counts.items() if 500 <= k < 600 and k != 503),
            "rss_first_mb": first["rss_mb"] if first else float("nan"), "rss_end_mb": end["rss_mb"],
            "rss_growth": growth, "threads": end["threads"], "fds": end["fds"],
            "open_connections": (status.get("transport") or {}).get("open_connections")}


def _reset_peak(pid: int) -> bool:
    """Reset the kernel's peak RSS (VmHWM) of ``pid``; False where the kernel does not allow it."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return float("nan")


def _gauge(host: str, port: int, name: str) -> float | None:
    """One value of the daemon's /metrics (None if it has no such line)."""
    from edge.v2.client import ClientConnection

    c = ClientConnection(host, port, timeout=10)
    try:
        _, _, data = c.request("GET", "/metrics")
    finally:
        c.close()
    for line in data.decode("utf-8", "replace").splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def flood(bundle: str, table: str, profile: str | None, rounds: int = 10, connections: int = 64,
          cap_mb: float = FLOOD_CAP_MB, hold_s: float = FLOOD_HOLD_S, say=print) -> dict:
    """The body flood on a fresh daemon: ``rounds`` x ``connections`` bodies that never finish, held then closed."""
    from benchmarks.evaluate.placement import client_side, place

    with client_side(place()) as p:
        server_cpus = None if p.server is None else set(p.server)
        return _flood(bundle, table, profile, rounds, connections, cap_mb, hold_s, server_cpus, say)


def _flood(bundle, table, profile, rounds, connections, cap_mb, hold_s, server_cpus, say) -> dict:
    import tempfile

    from edge.v2.client import ClientConnection

    argv = [sys.executable, "-m", "edgekit.cli", "serve", bundle, "--table", table, "--port", "0",
            "--max-buffered-mb", f"{cap_mb:g}"]
    if profile:
        argv += ["--profile", profile]
    proc = Daemon(argv, Path(tempfile.mkdtemp(prefix="edgekit-flood-")) / "daemon.log", START_TIMEOUT_S,
                  cpus=server_cpus)
    proc.start()
    assert proc.proc is not None
    pid, host, port = proc.proc.pid, proc.host, proc.port
    head = (b"POST /v2/models/edgekit/infer HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (host.encode(), FLOOD_BODY_BYTES))
    body = b" " * (FLOOD_BODY_BYTES - 1)
    statuses: collections.Counter = collections.Counter()
    errors: collections.Counter = collections.Counter()
    lock = threading.Lock()

    def send(s: socket.socket) -> None:
        try:
            s.sendall(head)
            s.sendall(body)
        except OSError as exc:  # a refused body: the daemon answered 503 and stopped reading it
            with lock:
                errors[type(exc).__name__] += 1

    try:
        c = ClientConnection(host, port, timeout=10)
        for _ in range(20):  # warm the paths a request takes before "start" is read
            c.request("GET", "/v2/health/live")
        c.close()
        time.sleep(1.0)
        start = rss_mb(pid)
        exact_peak = _reset_peak(pid)
        sampled = start
        say(f"flood: {rounds} rounds x {connections} connections x {FLOOD_BODY_BYTES - 1} bytes of an "
            f"{FLOOD_BODY_BYTES}-byte body, held {hold_s:g} s; daemon pid {pid}, --max-buffered-mb {cap_mb:g}; "
            f"RSS before {start:.1f} MB")
        for r in range(rounds):
            socks = [socket.create_connection((host, port), timeout=FLOOD_SEND_TIMEOUT_S) for _ in range(connections)]
            threads = [threading.Thread(target=send, args=(s,), daemon=True) for s in socks]
            for t in threads:
                t.start()
            end = time.monotonic() + FLOOD_SEND_TIMEOUT_S
            for t in threads:
                t.join(max(0.0, end - time.monotonic()))
            time.sleep(hold_s)
            sampled = max(sampled, rss_mb(pid))
            for s in socks:
                s.setblocking(False)
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                statuses[int(data[9:12]) if data.startswith(b"HTTP/1.1 ") else "none"] += 1
                s.close()
            say(f"  round {r + 1}: RSS {rss_mb(pid):.1f} MB, answers so far {dict(statuses)}")
        time.sleep(FLOOD_SETTLE_S)
        after = rss_mb(pid)
        peak = _peak_mb(pid) if exact_peak else sampled
        buffered = _gauge(host, port, "edgekit_buffered_request_bytes")
        c = ClientConnection(host, port, timeout=10)
        serving, _, _ = c.request("GET", "/v2/health/ready")
        c.close()
    finally:
        proc.stop()
    cap = float(cap_mb)  # MiB (--max-buffered-mb counts MiB), the unit rss_mb reports in
    return {"rounds": rounds, "connections": connections, "cap_mb": cap, "rss_start_mb": start, "rss_peak_mb": peak,
            "peak_exact": exact_peak, "rss_after_mb": after, "answers": dict(statuses), "send_errors": dict(errors),
            "buffered_after": buffered, "ready_after": serving,
            "peak_ok": peak <= (start + cap) * (1 + GOAL_FLOOD_PEAK),
            "after_ok": abs(after - start) <= GOAL_FLOOD_AFTER * start}


def format_flood(r: dict) -> str:
    limit = (r["rss_start_mb"] + r["cap_mb"]) * (1 + GOAL_FLOOD_PEAK)
    lines = [
        f"body flood: {r['rounds']} rounds x {r['connections']} connections; answers {r['answers']} "
        f"(503: refused past the buffer cap; none: held, then closed by the client); sends cut short "
        f"{r['send_errors'] or 0}; buffered request bytes after (the /metrics request's own head): "
        f"{r['buffered_after']}; "
        f"/v2/health/ready after: {r['ready_after']}",
        f"daemon RSS before {r['rss_start_mb']:.1f} MB, peak {r['rss_peak_mb']:.1f} MB "
        f"({'VmHWM' if r['peak_exact'] else 'sampled once a round'}), after {r['rss_after_mb']:.1f} MB; "
        f"cap {r['cap_mb']:g} MB",
        f"goal peak <= (start + cap) x {1 + GOAL_FLOOD_PEAK:.2f} = {limit:.1f} MB: "
        f"{'PASS' if r['peak_ok'] else 'MISS'}",
        f"goal after within {GOAL_FLOOD_AFTER * 100:.0f} % of start ({r['rss_start_mb']:.1f} MB): "
        f"{(r['rss_after_mb'] - r['rss_start_mb']) / r['rss_start_mb'] * 100:+.1f} %: "
        f"{'PASS' if r['after_ok'] else 'MISS'}",
    ]
    return "\n".join(lines)


def format_results(r: dict) -> str:
    lines = [
        f"requests answered: {r['answered']} in {r['seconds']:g} s ({r['answered'] / r['seconds']:.0f}/s); "
        f"by status {r['by_status']}; connection errors {r['errors'] or 0}",
        f"statuses other than 200/408/503: {r['bad_status'] or 'none'}; 5xx (not 503): {r['five_xx']}",
        f"daemon RSS after the first minute {r['rss_first_mb']:.1f} MB, at the end {r['rss_end_mb']:.1f} MB "
        f"(growth {r['rss_growth'] * 100:+.2f} %); threads {r['threads']}; open fds {r['fds']}; "
        f"connections open at the end {r['open_connections']}",
    ]
    ok = not r["bad_status"] and not r["errors"] and r["rss_growth"] <= GOAL_RSS_GROWTH
    lines.append(f"goal only 200/408/503, no connection errors, RSS growth <= 5 %: {'met' if ok else 'NOT met'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("bundle")
    p.add_argument("--table", required=True)
    p.add_argument("--profile", default=None)
    p.add_argument("--seconds", type=float, default=600.0)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--idle", type=int, default=1000)
    p.add_argument("--phase", choices=PHASES, default="all", help="the soak, the body flood, or both (default)")
    p.add_argument("--flood-rounds", type=int, default=10)
    p.add_argument("--flood-connections", type=int, default=64)
    p.add_argument("--flood-cap-mb", type=float, default=FLOOD_CAP_MB,
                   help="the flooded daemon's --max-buffered-mb (at least its 8 MiB body cap)")
    a = p.parse_args(argv)
    if not (10 <= a.seconds <= 3600) or not (1 <= a.clients <= 64) or not (0 <= a.idle <= 5000):
        p.error("--seconds 10..3600, --clients 1..64, --idle 0..5000")
    if not (1 <= a.flood_rounds <= 100) or not (1 <= a.flood_connections <= 256) or not (8 <= a.flood_cap_mb <= 4096):
        p.error("--flood-rounds 1..100, --flood-connections 1..256, --flood-cap-mb 8..4096")
    ok = True
    if a.phase in ("all", "soak"):
        r = run(a.bundle, a.table, a.profile, a.seconds, a.clients, a.idle)
        print(format_results(r))
        ok = not r["bad_status"] and not r["errors"] and r["rss_growth"] <= GOAL_RSS_GROWTH
    if a.phase in ("all", "flood"):
        f = flood(a.bundle, a.table, a.profile, a.flood_rounds, a.flood_connections, a.flood_cap_mb)
        print(format_flood(f))
        ok = ok and f["peak_ok"] and f["after_ok"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
