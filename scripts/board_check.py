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
   ``edgekit serve`` on each bundle, with requests sent from the host with ``edge/client.py``;
7. measures the canary drift of every artifact between this host and aarch64
   (``benchmarks/canary_drift.py``), which is what the int8 canary tolerance is set from.

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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parent.parent
DEFAULT_ROOT = Path(os.environ.get("EDGEKIT_BOARD_ROOT", "/var/cache/edgekit/board-root-arm64"))
DEFAULT_WORK = Path(os.environ.get("EDGEKIT_BOARD_WORK", "/var/cache/edgekit/board-check"))
ROOT_OK = ".edgekit-board-root-ok"  # written last: a root without it is rebuilt
PROFILES = ("rpi4", "jetson-orin-nano")  # LiteRT and ONNX Runtime, both aarch64 boards
IN_ROOT_SRC = "/opt/edgekit"  # the checkout, inside the root
IN_ROOT_WORK = "/opt/board-check"  # bundles and results, inside the root
TOOLS = {"qemu-aarch64-static": "qemu-user-static", "debootstrap": "debootstrap", "update-binfmts": "binfmt-support"}
# The versions the check reports from inside the root.
PACKAGES = (
    "edgekit",
    "numpy",
    "ai-edge-litert",
    "onnxruntime",
    "uvloop",
    "httptools",
    "prometheus_client",
    "psutil",
    "matplotlib",
    "tqdm",
)


class BoardCheckError(RuntimeError):
    """A precondition or a step failed; the message says what to do."""


@dataclass(frozen=True)
class BoardCheckOptions:
    root: Path = DEFAULT_ROOT
    work: Path = DEFAULT_WORK
    suite: str = "bookworm"
    mirror: str = "http://deb.debian.org/debian"
    qemu_cpu: str = "cortex-a72"  # QEMU's default CPU model is ~10x slower to emulate
    rebuild_root: bool = False
    bench_runs: int = 5  # timed runs per artifact: enough to exercise bench, not to measure a board
    eval_limit: int = 200  # on-device accuracy images per artifact
    requests: int = 50  # requests sent to each daemon
    drift_images: int = 200  # images per artifact for the canary-drift measurement
    run: Path | None = None  # an existing trained run (e.g. the demo's) instead of 3 small CNNs


@dataclass
class Step:
    name: str
    ok: bool
    seconds: float
    detail: str = ""


@dataclass
class Report:
    host: str
    emulation: str
    steps: list[Step] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    results: dict[str, dict] = field(default_factory=dict)


def say(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------- preconditions


def check_host() -> None:
    if sys.platform != "linux":
        raise BoardCheckError(f"the board check needs Linux (chroot, binfmt_misc, debootstrap); this is {sys.platform}")
    if os.geteuid() != 0:
        raise BoardCheckError(
            "the board check must run as root (it mounts binfmt_misc and /proc in the root, and "
            "runs chroot): run 'sudo make board-check'"
        )


def ensure_tools(native: bool) -> None:
    wanted = {} if native else dict(TOOLS)
    wanted["debootstrap"] = "debootstrap"
    missing = {exe: pkg for exe, pkg in wanted.items() if shutil.which(exe) is None}
    if not missing:
        return
    pkgs = sorted(set(missing.values()))
    say(f"board-check: installing {' '.join(pkgs)} with apt-get")
    if shutil.which("apt-get") is None:
        raise BoardCheckError(
            f"{', '.join(missing)} missing and there is no apt-get: install the packages "
            f"{' '.join(pkgs)} (or your distribution's equivalents) and rerun"
        )
    cmd = ["apt-get", "install", "-y", "-q", *pkgs]
    if subprocess.run(cmd, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True)
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise BoardCheckError(
                f"apt-get could not install {' '.join(pkgs)}: {r.stderr.strip()[-400:]}\n"
                f"install them by hand ('apt-get install {' '.join(pkgs)}') and rerun"
            )
    still = [exe for exe in missing if shutil.which(exe) is None]
    if still:
        raise BoardCheckError(f"{', '.join(still)} still missing after installing {' '.join(pkgs)}")


BINFMT = Path("/proc/sys/fs/binfmt_misc")


def ensure_binfmt() -> str:
    """Mount binfmt_misc and enable QEMU's aarch64 handler; returns the handler's interpreter line."""
    if not (BINFMT / "register").exists():
        r = subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], capture_output=True, text=True)
        if r.returncode != 0 or not (BINFMT / "register").exists():
            raise BoardCheckError(
                f"cannot mount binfmt_misc on {BINFMT} ({r.stderr.strip() or 'no register file'}): in a container, "
                "mount it on the host ('mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc') or run the "
                "container privileged, then rerun"
            )
    handler = BINFMT / "qemu-aarch64"
    if not handler.exists() or "enabled" not in handler.read_text():
        r = subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], capture_output=True, text=True)
        if not handler.exists() or "enabled" not in handler.read_text():
            raise BoardCheckError(
                f"cannot enable the qemu-aarch64 binfmt handler ({r.stderr.strip()}): "
                "reinstall qemu-user-static and binfmt-support, then rerun"
            )
    lines = handler.read_text().splitlines()
    interp = next((x.split(None, 1)[1] for x in lines if x.startswith("interpreter")), "?")
    flags = next((x.split(None, 1)[1] for x in lines if x.startswith("flags")), "")
    if "F" not in flags:
        raise BoardCheckError(
            f"the qemu-aarch64 handler lacks the F (fix binary) flag ({flags!r}), so the root "
            "cannot find the emulator: use Debian's qemu-user-static, which registers it with F"
        )
    return interp


# --------------------------------------------------------------------------- the root


def build_root(opts: BoardCheckOptions) -> bool:
    """Build the arm64 root with debootstrap, or reuse the cached one. True if it was built now."""
    if (opts.root / ROOT_OK).exists() and not opts.rebuild_root:
        return False
    partial = opts.root.with_name(opts.root.name + ".partial")
    for old in (partial, opts.root):
        if old.exists():
            unmount_all(old)
            shutil.rmtree(old)
    partial.parent.mkdir(parents=True, exist_ok=True)
    say(f"board-check: building an arm64 {opts.suite} root in {opts.root} (debootstrap, about 5 minutes)")
    cmd = [
        "debootstrap",
        "--arch=arm64",
        "--variant=minbase",
        "--include=python3,python3-venv,python3-pip,ca-certificates",
        opts.suite,
        str(partial),
        opts.mirror,
    ]
    log = opts.work / "debootstrap.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        r = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        raise BoardCheckError(
            f"debootstrap failed (exit {r.returncode}); last lines of {log}:\n  "
            + "\n  ".join(tail)
            + f"\ncheck that {opts.mirror} is reachable, then rerun"
        )
    (partial / ROOT_OK).write_text(
        json.dumps({"suite": opts.suite, "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    )
    partial.rename(opts.root)
    return True


def pi_like_cpuinfo(cores: int) -> str:
    """A Cortex-A72 /proc/cpuinfo. The root otherwise sees the host's x86 one, and onnxruntime's CPU
    detection crashes on it under QEMU (a real board has its own). It names no board on purpose."""
    block = (
        "processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
        "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\n"
        "CPU revision\t: 3\n\n"
    )
    return "".join(block.format(i=i) for i in range(cores))


def _mounts_under(root: Path) -> list[str]:
    out = []
    for line in Path("/proc/mounts").read_text().splitlines():
        target = line.split()[1].replace("\\040", " ")
        if target == str(root) or target.startswith(str(root) + "/"):
            out.append(target)
    return out


def unmount_all(root: Path) -> None:
    for target in sorted(_mounts_under(root), key=len, reverse=True):
        subprocess.run(["umount", "-l", target], capture_output=True)


@contextmanager
def mounted(root: Path, native: bool) -> Iterator[None]:
    """/proc, /dev, /sys, DNS, the host's CA certificates and (emulated) an ARM cpuinfo, for the session."""
    unmount_all(root)
    try:
        for src, dst, how in (
            ("proc", "proc", ["-t", "proc"]),
            ("/dev", "dev", ["--rbind"]),
            ("/sys", "sys", ["--rbind"]),
        ):
            (root / dst).mkdir(exist_ok=True)
            r = subprocess.run(["mount", *how, src, str(root / dst)], capture_output=True, text=True)
            if r.returncode != 0:
                raise BoardCheckError(f"cannot mount {src} in the root: {r.stderr.strip()}")
        for name in ("resolv.conf", "hosts"):
            host_file = Path("/etc") / name
            if host_file.exists():
                target = root / "etc" / name
                if target.is_symlink():
                    target.unlink()
                shutil.copyfile(host_file, target)
        ca = Path("/etc/ssl/certs/ca-certificates.crt")
        if ca.exists():  # pip inside the root must trust what the host trusts (HTTPS may be intercepted)
            shutil.copyfile(ca, root / "etc/ssl/certs/edgekit-host-ca.crt")
        if not native:
            fake = root / "etc/edgekit-cpuinfo"
            fake.write_text(pi_like_cpuinfo(os.cpu_count() or 1))
            r = subprocess.run(
                ["mount", "--bind", str(fake), str(root / "proc/cpuinfo")], capture_output=True, text=True
            )
            if r.returncode != 0:
                raise BoardCheckError(f"cannot bind-mount the ARM cpuinfo in the root: {r.stderr.strip()}")
        yield
    finally:
        unmount_all(root)


def root_env(opts: BoardCheckOptions, emulation: str) -> dict[str, str]:
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "EDGEKIT_EMULATION": emulation,
        "QEMU_CPU": opts.qemu_cpu,
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_DEFAULT_TIMEOUT": "180",
        "MPLBACKEND": "Agg",
    }
    if (opts.root / "etc/ssl/certs/edgekit-host-ca.crt").exists() or Path(
        "/etc/ssl/certs/ca-certificates.crt"
    ).exists():
        for k in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
            env[k] = "/etc/ssl/certs/edgekit-host-ca.crt"
    for k in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy", "PIP_INDEX_URL"):
        if os.environ.get(k):
            env[k] = os.environ[k]
    return env


def in_root(
    opts: BoardCheckOptions, emulation: str, script: str, timeout: float, check: bool = True, popen: bool = False
):
    """Run a bash script inside the root (chroot, a clean environment)."""
    cmd = ["chroot", str(opts.root), "/bin/bash", "-c", script]
    env = root_env(opts, emulation)
    if popen:
        return subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        out = (r.stdout + r.stderr).strip().splitlines()[-15:]
        raise BoardCheckError(f"inside the root, '{script[:120]}' failed (exit {r.returncode}):\n  " + "\n  ".join(out))
    return r


def copy_checkout(root: Path) -> int:
    """Copy this checkout's files (tracked and untracked-not-ignored) into the root; keep its .venv."""
    dest = root / IN_ROOT_SRC.lstrip("/")
    files = (
        subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True
        )
        .stdout.decode()
        .split("\0")
    )
    files = [f for f in files if f and (REPO / f).is_file()]
    if dest.exists():
        for child in dest.iterdir():
            if child.name != ".venv":
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    dest.mkdir(parents=True, exist_ok=True)
    for f in files:
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, dest / f)
    return len(files)


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
    """Start the daemon inside the root, send requests from the host with edge/client.py, stop it."""
    import numpy as np

    sys.path.insert(0, str(REPO))
    from edge.bundle import open_bundle
    from edge.client import Client

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
        f"cd {IN_ROOT_SRC} && .venv/bin/python -m benchmarks.canary_drift scores {bundle_in_root} "
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
            "benchmarks.canary_drift",
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
        [sys.executable, "-m", "benchmarks.canary_drift", "compare", str(host), str(arm), "--json"],
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
