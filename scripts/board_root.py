"""The emulated board root for `make board-check`: preconditions, the cached arm64 Debian root,
its mounts, and running commands inside it (chroot, QEMU user mode through binfmt_misc)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
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
