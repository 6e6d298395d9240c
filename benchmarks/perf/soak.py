"""Soak the daemon: 8 keep-alive clients at saturation with 1,000 idle connections open, for 10 minutes (bounded).

    .venv/bin/python -m benchmarks.perf.soak BUNDLE --table SELECTED.json [--profile P] [--seconds 600]
                                        [--clients 8] [--idle 1000]

The daemon runs with ``--miss reject`` and a small queue so that every answer kind occurs:
200 (served), 408 (deadline cannot be met) and 503 (queue full); deadlines are drawn
uniformly between 0.01 ms and 3x the slowest variant's p95. Anything else, a 5xx or a
connection error, is a failure. Every minute and at the end it prints requests sent and
answered by status, the daemon's resident memory (growth from the first minute to the
end must stay within 5 %), threads and open file descriptors. Loopback only; the run stops
by itself after ``--seconds``.
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
    a = p.parse_args(argv)
    if not (10 <= a.seconds <= 3600) or not (1 <= a.clients <= 64) or not (0 <= a.idle <= 5000):
        p.error("--seconds 10..3600, --clients 1..64, --idle 0..5000")
    r = run(a.bundle, a.table, a.profile, a.seconds, a.clients, a.idle)
    print(format_results(r))
    return 0 if not r["bad_status"] and not r["errors"] and r["rss_growth"] <= GOAL_RSS_GROWTH else 1


if __name__ == "__main__":
    sys.exit(main())
