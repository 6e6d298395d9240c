"""`make board-check`: prove the board install on aarch64 in an emulated 64-bit Debian root.

What it does, each step timed and reported:

1. checks it runs as root on Linux, and installs qemu-user-static, binfmt-support and
   debootstrap with apt-get where they are missing;
2. mounts binfmt_misc and enables QEMU's aarch64 handler (skipped on an aarch64 host);
3. builds an arm64 Debian bookworm root with Python 3.11 (debootstrap, ~5 minutes), or
   reuses the cached one ($EDGEKIT_BOARD_ROOT, default /var/cache/edgekit/board-root-arm64);
4. copies this checkout into the root and runs ``scripts/setup.sh runtime`` there: the
   runtime extra only, exactly what a board installs (no TensorFlow);
5. on the workstation (this host): trains 3 small CNNs, converts them for ``rpi4`` (LiteRT)
   and ``jetson-orin-nano`` (ONNX Runtime) and packs one bundle per profile;
6. inside the root: ``edgekit verify``, a short ``edgekit bench``, ``edgekit select`` and
   ``edgekit serve`` on each bundle, with requests sent from the host with ``edge/v2/client.py``;
7. measures the canary drift of every artifact between this host and aarch64
   (``benchmarks/perf/canary_drift.py``), which is what the int8 canary tolerance is set from.

Emulation is not a board: QEMU user mode runs aarch64 code through a translator on this
host's CPU, so every timing printed here is an emulated timing, labelled as such, and says
nothing about a Raspberry Pi's or a Jetson's latency. What it proves is that the device side
installs from the package index on aarch64, loads, verifies, benchmarks, selects and serves.

Run it with ``make board-check`` (as root). Rerun: the root, its virtualenv and the trained
models are reused, so a rerun takes a few minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))  # board_root.py beside this script
from board_root import (  # noqa: E402
    DEFAULT_ROOT,
    DEFAULT_WORK,
    IN_ROOT_SRC,
    IN_ROOT_WORK,
    PACKAGES,
    PROFILES,
    REPO,
    BoardCheckError,
    BoardCheckOptions,
    Report,
    Step,
    build_root,
    check_host,
    copy_checkout,
    ensure_binfmt,
    ensure_tools,
    in_root,
    mounted,
    say,
)

# --------------------------------------------------------------------------- the workstation side


def host_edgekit(*args: str, timeout: float = 1800) -> str:
    exe = Path(sys.executable).with_name("edgekit")
    cmd = [str(exe) if exe.exists() else "edgekit", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        out = (r.stdout + r.stderr).strip().splitlines()[-15:]
        raise BoardCheckError(f"on the workstation, 'edgekit {' '.join(args)}' failed:\n  " + "\n  ".join(out))
    return r.stdout


def make_bundles(opts: BoardCheckOptions) -> dict[str, Path]:
    """Train 3 small CNNs (reused on rerun), convert them for both profiles and pack a bundle each."""
    run = opts.run or opts.work / "run"
    if opts.run is None:
        host_edgekit(
            "train",
            str(run),
            "--family",
            "demo",
            "--limit",
            "3",
            "--quick",
            "--limit-train",
            "6000",
            "--epochs",
            "2",
            "--no-progress",
        )
    profile_args = [a for p in PROFILES for a in ("--profile", p)]
    host_edgekit("convert", str(run), *profile_args, "--limit-test", "1000", "--no-progress")
    out = {}
    for p in PROFILES:
        dest = opts.work / "bundles" / f"{p}.tar.gz"  # rebuilt each time: it may come from another run
        dest.parent.mkdir(parents=True, exist_ok=True)
        host_edgekit("bundle", str(run), "--profile", p, "--out", str(dest), "--eval-size", "1000", "--force")
        out[p] = dest
    return out


# --------------------------------------------------------------------------- the checks inside the root


def read_versions(opts: BoardCheckOptions, emulation: str) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json, platform, sys; "
        f"names = {list(PACKAGES)!r}; out = {{}}\n"
        "for n in names:\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: out[n] = 'not installed'\n"
        "out['python'] = platform.python_version(); out['machine'] = platform.machine()\n"
        "out['tensorflow'] = 'installed (wrong: a board must not have it)' if "
        "__import__('importlib.util').util.find_spec('tensorflow') else 'not installed (right)'\n"
        "print(json.dumps(out))"
    )
    r = in_root(opts, emulation, f"cd {IN_ROOT_SRC} && .venv/bin/python -c {sh_quote(code)}", timeout=300)
    versions = json.loads(r.stdout.strip().splitlines()[-1])
    osr = in_root(opts, emulation, '. /etc/os-release && echo "$PRETTY_NAME"', timeout=60).stdout.strip()
    versions["os"] = osr
    return versions


def sh_quote(s: str) -> str:
    return "'" + s.replace("'", "'\"'\"'") + "'"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_and_query(
    opts: BoardCheckOptions, emulation: str, profile: str, bundle_in_root: str, selected_in_root: str, host_bundle: Path
) -> dict:
    """Start the daemon inside the root, send requests from the host with edge/v2/client.py, stop it."""
    import numpy as np

    sys.path.insert(0, str(REPO))
    from edge.bundle.reader import open_bundle
    from edge.v2.client import Client

    port = free_port()
    proc = in_root(
        opts,
        emulation,
        f"cd {IN_ROOT_SRC} && exec .venv/bin/edgekit serve {bundle_in_root} --table "
        f"{selected_in_root} --profile {profile} "
        f"--host 127.0.0.1 --port {port}",
        timeout=0,
        popen=True,
    )
    lines: list[str] = []
    t0 = time.monotonic()
    try:
        while True:
            line = proc.stdout.readline()
            if not line:
                raise BoardCheckError(
                    f"the daemon inside the root exited (code {proc.wait()}) before listening:\n  "
                    + "\n  ".join(lines[-15:])
                )
            lines.append(line.rstrip())
            if "listening on" in line:
                break
            if time.monotonic() - t0 > 600:
                raise BoardCheckError("the daemon inside the root did not start within 10 minutes")
        start_s = time.monotonic() - t0
        bundle = open_bundle(host_bundle, cache_dir=opts.work / "cache")
        images, labels = bundle.eval_set(limit=opts.requests, part="serve")
        answered = correct = met = 0
        variants: dict[str, int] = {}
        total_ms = []
        with Client(f"http://127.0.0.1:{port}") as client:
            meta = client.metadata()
            for img, lab in zip(images, labels):
                c = client.classify(img, deadline_ms=1000.0)
                if c.ok:
                    answered += 1
                    correct += int(c.label == int(lab))
                    met += int(c.deadline_met)
                    variants[c.variant or "?"] = variants.get(c.variant or "?", 0) + 1
                    if c.total_ms is not None:
                        total_ms.append(c.total_ms)
        return {
            "port": port,
            "start_s": round(start_s, 1),
            "sent": len(images),
            "answered": answered,
            "correct": correct,
            "deadline_met": met,
            "variants": variants,
            "model": meta.get("name"),
            "median_total_ms_emulated": round(float(np.median(total_ms)), 2) if total_ms else None,
            "daemon_lines": [x for x in lines if x.strip()][-6:],
        }
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


# --------------------------------------------------------------------------- orchestration


class Runner:
    def __init__(self, report: Report):
        self.report = report

    @contextmanager
    def step(self, name: str) -> Iterator[list[str]]:
        detail: list[str] = []
        t0 = time.monotonic()
        say(f"--> {name}")
        try:
            yield detail
        except BaseException as exc:
            dt = time.monotonic() - t0
            self.report.steps.append(
                Step(name, False, round(dt, 1), str(exc).splitlines()[0] if str(exc) else repr(exc))
            )
            say(f"[FAILED] {name} ({dt:.1f} s)")
            raise
        dt = time.monotonic() - t0
        self.report.steps.append(Step(name, True, round(dt, 1), "; ".join(detail)))
        say(f"[ok] {name} ({dt:.1f} s){': ' + '; '.join(detail) if detail else ''}")


def emulation_label(native: bool, opts: BoardCheckOptions) -> str:
    if native:
        return ""
    qemu = subprocess.run(["qemu-aarch64-static", "--version"], capture_output=True, text=True).stdout.splitlines()
    ver = qemu[0].replace("qemu-aarch64 version ", "") if qemu else "?"
    return f"qemu-user {ver.split()[0]} emulating aarch64 (QEMU_CPU={opts.qemu_cpu}) on an {platform.machine()} host"


def board_check(opts: BoardCheckOptions, report: Report) -> None:
    check_host()
    native = platform.machine() in ("aarch64", "arm64")
    emulation = ""
    report.host = f"{platform.machine()} {platform.platform()}"
    report.emulation = "none (native aarch64)"
    runner = Runner(report)
    opts.work.mkdir(parents=True, exist_ok=True)
    t_all = time.monotonic()
    try:
        with runner.step("tools: qemu-user-static, binfmt-support, debootstrap") as d:
            ensure_tools(native)
            if not native:
                emulation = emulation_label(False, opts)
                report.emulation = emulation
            d.append(emulation or "native aarch64, no emulator")
        if not native:
            with runner.step("binfmt_misc: qemu-aarch64 handler") as d:
                d.append(ensure_binfmt())
        with runner.step(f"arm64 {opts.suite} root") as d:
            built = build_root(opts)
            d.append(("built " if built else "reused cached ") + str(opts.root))
        with mounted(opts.root, native):
            with runner.step("copy this checkout into the root") as d:
                d.append(f"{copy_checkout(opts.root)} files -> {IN_ROOT_SRC}")
            with runner.step("scripts/setup.sh runtime (inside the root)") as d:
                r = in_root(opts, emulation, f"cd {IN_ROOT_SRC} && bash scripts/setup.sh runtime", timeout=3600)
                d.append(r.stdout.strip().splitlines()[-1] if r.stdout.strip() else "done")
            with runner.step("versions installed on aarch64") as d:
                report.versions = read_versions(opts, emulation)
                d.append(", ".join(f"{k} {v}" for k, v in report.versions.items()))
            what = f"convert {opts.run}" if opts.run else "train 3 CNNs, convert"
            with runner.step(f"workstation: {what}, bundle for " + " and ".join(PROFILES)) as d:
                bundles = make_bundles(opts)
                d.append(", ".join(f"{p}: {b.stat().st_size // 1024} KiB" for p, b in bundles.items()))
            work_in = opts.root / IN_ROOT_WORK.lstrip("/")
            if work_in.exists():
                shutil.rmtree(work_in)
            work_in.mkdir(parents=True)
            for p, b in bundles.items():
                shutil.copy2(b, work_in / b.name)
            for p in PROFILES:
                res: dict = {}
                report.results[p] = res
                b_in = f"{IN_ROOT_WORK}/{p}.tar.gz"
                table = f"{IN_ROOT_WORK}/{p}-table.json"
                sel = f"{IN_ROOT_WORK}/{p}-selected.json"
                ek = f"cd {IN_ROOT_SRC} && .venv/bin/edgekit"
                with runner.step(f"[{p}] edgekit verify (inside the root)") as d:
                    r = in_root(opts, emulation, f"{ek} verify {b_in} --profile {p}", timeout=1800, check=False)
                    res["verify"] = _verify_summary(r.stdout + r.stderr, r.returncode)
                    d.append(res["verify"]["summary"])
                    if r.returncode != 0:
                        raise BoardCheckError(
                            "verify failed on aarch64:\n  "
                            + "\n  ".join((r.stdout + r.stderr).strip().splitlines()[-15:])
                        )
                with runner.step(f"[{p}] edgekit bench, {opts.bench_runs} runs per artifact (EMULATED timings)") as d:
                    in_root(
                        opts,
                        emulation,
                        f"{ek} bench {b_in} --profile {p} --out {table} --min-runs {opts.bench_runs} "
                        f"--min-seconds 0 --max-seconds 5 --warmup 2 --eval-limit {opts.eval_limit} "
                        "--overwrite --no-progress",
                        timeout=3600,
                    )
                    rows = json.loads((opts.root / table.lstrip("/")).read_text())
                    res["bench_rows"] = len(rows.get("rows", []))
                    res["bench_device"] = rows.get("header", {}).get("cpu_model", "?")
                    d.append(f"{res['bench_rows']} rows; table labelled '{res['bench_device']}'")
                with runner.step(f"[{p}] edgekit select (inside the root)") as d:
                    in_root(opts, emulation, f"{ek} select {table} --profile {p} --out {sel}", timeout=600)
                    s = json.loads((opts.root / sel.lstrip("/")).read_text())
                    res["selected"] = len(s.get("rows", s.get("variants", [])))
                    d.append(f"{res['selected']} variants on the front")
                with runner.step(f"[{p}] edgekit serve inside the root, {opts.requests} requests from the host") as d:
                    res["serve"] = serve_and_query(opts, emulation, p, b_in, sel, opts.work / "bundles" / f"{p}.tar.gz")
                    sv = res["serve"]
                    d.append(
                        f"{sv['answered']}/{sv['sent']} answered, {sv['correct']} correct, "
                        f"daemon up in {sv['start_s']} s, variants {sv['variants']}"
                    )
                    if sv["answered"] != sv["sent"]:
                        raise BoardCheckError(f"the daemon answered {sv['answered']} of {sv['sent']} requests")
                with runner.step(f"[{p}] canary drift x86-64 -> aarch64, {opts.drift_images} images per artifact") as d:
                    res["drift"] = measure_drift(opts, emulation, p, b_in)
                    worst = max(res["drift"]["artifacts"], key=lambda a: a["relative"], default=None)
                    d.append(
                        f"worst: {worst['artifact_id']} max |diff| {worst['max_abs_diff']:.3g} "
                        f"(relative {worst['relative']:.3g})"
                        if worst
                        else "no artifacts"
                    )
    finally:
        report.results["total_s"] = {"seconds": round(time.monotonic() - t_all, 1)}
        out = opts.work / "board-check.json"
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(asdict(report), indent=2, default=str))
        os.replace(tmp, out)


def _verify_summary(output: str, code: int) -> dict:
    """The counts from verify's last line, 'N ok, M failed, K skipped'."""
    import re

    m = None
    for line in output.splitlines():
        m = re.match(r"(\d+) ok, (\d+) failed, (\d+) skipped", line.strip()) or m
    last = next((x for x in reversed(output.strip().splitlines()) if x.strip()), "")
    if m is None:
        return {"exit": code, "canary_ok": "?", "failed": "?", "skipped": "?", "summary": last.strip()}
    ok, failed, skipped = map(int, m.groups())
    return {"exit": code, "canary_ok": ok, "failed": failed, "skipped": skipped, "summary": m.group(0)}


def measure_drift(opts: BoardCheckOptions, emulation: str, profile: str, bundle_in_root: str) -> dict:
    """Scores of every artifact on the same images on aarch64 (in the root) and here, compared."""
    out_in = f"{IN_ROOT_WORK}/{profile}-scores-aarch64.npz"
    in_root(
        opts,
        emulation,
        f"cd {IN_ROOT_SRC} && .venv/bin/python -m benchmarks.perf.canary_drift scores {bundle_in_root} "
        f"--profile {profile} --images {opts.drift_images} --out {out_in}",
        timeout=3600,
    )
    arm = opts.work / f"{profile}-scores-aarch64.npz"
    shutil.copy2(opts.root / out_in.lstrip("/"), arm)
    host = opts.work / f"{profile}-scores-{platform.machine()}.npz"
    bundle = opts.work / "bundles" / f"{profile}.tar.gz"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.perf.canary_drift",
            "scores",
            str(bundle),
            "--profile",
            profile,
            "--images",
            str(opts.drift_images),
            "--out",
            str(host),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        raise BoardCheckError(f"scoring on the host failed: {r.stderr.strip()[-600:]}")
    r = subprocess.run(
        [sys.executable, "-m", "benchmarks.perf.canary_drift", "compare", str(host), str(arm), "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        raise BoardCheckError(f"comparing the scores failed: {r.stderr.strip()[-600:]}")
    result = json.loads(r.stdout)
    (opts.work / f"{profile}-drift.json").write_text(json.dumps(result, indent=2))
    return result


def print_summary(report: Report) -> None:
    say("")
    say("=" * 78)
    say("edgekit board check: aarch64, " + (report.emulation or "native"))
    if report.emulation and "qemu" in report.emulation:
        say("EMULATED: every timing below is QEMU's on this host, not a board's. It proves the install and the")
        say("          pipeline on aarch64, not a Raspberry Pi's or a Jetson's latency.")
    say(f"host: {report.host}")
    say("versions on aarch64: " + ", ".join(f"{k} {v}" for k, v in report.versions.items()))
    say("")
    say(f"{'step':<72} {'result':>7} {'time':>8}")
    for s in report.steps:
        say(f"{s.name[:72]:<72} {'ok' if s.ok else 'FAILED':>7} {s.seconds:>7.1f}s")
    for p, res in report.results.items():
        if p == "total_s":
            continue
        v = res.get("verify", {})
        sv = res.get("serve", {})
        say(
            f"[{p}] verify: {v.get('canary_ok', '?')} canary ok, {v.get('failed', '?')} failed; "
            f"bench table: {res.get('bench_rows', '?')} rows ({res.get('bench_device', '?')}); "
            f"selected: {res.get('selected', '?')}; served: {sv.get('answered', '?')}/{sv.get('sent', '?')} "
            f"({sv.get('correct', '?')} correct)"
        )
        worst: dict[tuple[str, str], dict] = {}
        for a in res.get("drift", {}).get("artifacts", []):
            key = (a.get("format", "?"), a.get("precision", "?"))
            if key not in worst or a["relative"] > worst[key]["relative"]:
                worst[key] = a
        for (fmt, prec), a in sorted(worst.items()):
            say(
                f"    drift x86-64 -> aarch64, worst {fmt} {prec:<7}: max|diff| {a['max_abs_diff']:.3g} "
                f"(relative {a['relative']:.3g}, tolerance {a['tolerance']:.3g}) in {a['artifact_id']}; "
                f"top-1 agree {a['top1_agree']:.3f}"
            )
    say(f"total: {report.results.get('total_s', {}).get('seconds', '?')} s")


def parse_args(argv: list[str] | None = None) -> BoardCheckOptions:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT, help=f"the cached arm64 root (default {DEFAULT_ROOT})")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK, help=f"models, bundles, results (default {DEFAULT_WORK})")
    p.add_argument("--rebuild-root", action="store_true", help="build the root again even if a cached one exists")
    p.add_argument("--qemu-cpu", default="cortex-a72", help="QEMU CPU model (default cortex-a72)")
    p.add_argument("--mirror", default="http://deb.debian.org/debian", help="Debian mirror for debootstrap")
    p.add_argument(
        "--run",
        type=Path,
        default=None,
        help="a trained run folder to bundle (e.g. demo/run) instead of training 3 small CNNs",
    )
    p.add_argument("--drift-images", type=int, default=200, help="images per artifact for the drift measurement")
    p.add_argument("--requests", type=int, default=50, help="requests sent to each daemon (default 50)")
    a = p.parse_args(argv)
    if a.requests < 1 or a.drift_images < 1:
        p.error("--requests and --drift-images must be at least 1")
    if a.run is not None and not (a.run / "run.json").is_file():
        p.error(f"--run {a.run}: no run.json there; give a folder made by 'edgekit train'")
    return BoardCheckOptions(
        root=a.root.resolve(),
        work=a.work.resolve(),
        rebuild_root=a.rebuild_root,
        qemu_cpu=a.qemu_cpu,
        mirror=a.mirror,
        requests=a.requests,
        drift_images=a.drift_images,
        run=a.run.resolve() if a.run else None,
    )


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    # A SIGTERM (Ctrl-C is already one) unwinds normally, so the root's mounts are undone.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    report = Report(host="", emulation="")
    try:
        board_check(opts, report)
    except BoardCheckError as exc:
        print_summary(report)
        print(f"\nboard-check FAILED: {exc}", file=sys.stderr)
        return 1
    print_summary(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
