"""Whether a device profile describes the machine this runs on: its architecture, enough cores, its accelerator.

A profile benched, verified or served on another machine (an rpi4 profile on an x86-64 workstation,
a Jetson profile without a GPU) still runs: the times are then this host's with the profile's
settings, never the board's. ``host_label`` says so in one line, modelled on the emulated-board
label of ``benchmarks.bench.sysinfo`` ("EMULATED aarch64: ... (not board timings)"), and
``edgekit bench`` records it in the latency table's header so that ``edgekit report`` repeats it.
Stdlib only: the loader's layer.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

from device_profiles.profiles import DeviceProfile

EMULATION_ENV = "EDGEKIT_EMULATION"

# platform.machine() spellings -> the profile's
_ARCH_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64", "armv8l": "aarch64", "armv7": "armv7l"}
# Execution providers that need an accelerator, and the accelerator they need.
_NEEDS = {"TensorrtExecutionProvider": "nvidia", "CUDAExecutionProvider": "nvidia", "CoreMLExecutionProvider": "apple"}
_ACCEL_NAMES = {"nvidia": "an NVIDIA GPU", "apple": "Apple's Neural Engine (macOS)"}
# Device nodes an NVIDIA driver makes: desktop GPUs (/dev/nvidia0) and Jetsons (nvhost, nvgpu).
_NVIDIA_PATHS = ("/dev/nvidia0", "/dev/nvhost-ctrl", "/dev/nvhost-ctrl-gpu", "/dev/nvgpu", "/etc/nv_tegra_release")


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace").strip().strip("\x00")
    except OSError:
        return ""


def normal_arch(machine: str) -> str:
    m = (machine or "").strip()
    return _ARCH_ALIASES.get(m.lower(), m)


def emulation() -> str:
    """What emulates this machine, '' on real hardware.

    The board check sets ``EDGEKIT_EMULATION`` inside its QEMU root. Without it, an ARM Python
    that reads an x86 /proc/cpuinfo is QEMU user mode too (it shows the host's file)."""
    label = os.environ.get(EMULATION_ENV, "").strip()
    if label:
        return label
    if platform.machine() in ("aarch64", "arm64", "armv7l") and "vendor_id" in _read("/proc/cpuinfo"):
        return "QEMU user mode on an x86 host (its /proc/cpuinfo is the host's)"
    return ""


def usable_cores() -> int:
    """Cores this process may run on (cgroup/affinity limits included where Linux says)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def accelerators() -> frozenset[str]:
    """The accelerators this machine has, as the keys of ``_ACCEL_NAMES``."""
    found = set()
    gpus = Path("/proc/driver/nvidia/gpus")
    if any(Path(p).exists() for p in _NVIDIA_PATHS) or (gpus.is_dir() and any(gpus.iterdir())):
        found.add("nvidia")
    if platform.system() == "Darwin":
        found.add("apple")
    return frozenset(found)


@dataclass(frozen=True)
class Host:
    """What a profile is compared against. ``accelerators`` None: unknown (a table read on another machine)."""

    machine: str
    cores: int
    accelerators: frozenset[str] | None = None
    emulation: str = ""

    @classmethod
    def detect(cls) -> Host:
        return cls(normal_arch(platform.machine()), usable_cores(), accelerators(), emulation())


def host_mismatch(profile: DeviceProfile, host: Host | None = None) -> tuple[str, ...]:
    """Each way ``host`` (default: this machine) is not what ``profile`` describes; () when it is."""
    h = host or Host.detect()
    why = []
    if h.emulation:
        why.append(f"this host emulates {h.machine} ({h.emulation})")
    if normal_arch(h.machine) != profile.arch:
        why.append(f"{profile.name} is an {profile.arch} board, this host is {normal_arch(h.machine) or 'unknown'}")
    busiest = max(profile.settings, key=lambda s: s.threads)
    if h.cores and busiest.threads > h.cores:
        why.append(f"its setting {busiest.name} runs {busiest.threads} threads on {h.cores} core"
                   f"{'s' if h.cores != 1 else ''}")
    if h.accelerators is not None:
        for s in profile.settings:
            need = next((_NEEDS[p] for p in s.providers if p in _NEEDS and s.backend == "onnxruntime"), None)
            if need and need not in h.accelerators:
                why.append(f"its setting {s.name} asks for {_ACCEL_NAMES[need]}, this host has none "
                           "(the CPU provider runs it)")
                break
    return tuple(why)


def mismatch_label(profile_name: str, reasons: str | tuple[str, ...], what: str = "times") -> str:
    """The one line: 'NOT A P: why; <what> are this host's with the settings of P, not P <what>'; '' without reasons."""
    text = reasons if isinstance(reasons, str) else "; ".join(reasons)
    if not text:
        return ""
    return (f"NOT A {profile_name}: {text}; {what} are this host's with the settings of {profile_name}, "
            f"not {profile_name} {what}")


def host_label(profile: DeviceProfile, host: Host | None = None, what: str = "times") -> str:
    """``mismatch_label`` for this machine (or ``host``) and ``profile``; '' when the host fits the profile."""
    return mismatch_label(profile.name, host_mismatch(profile, host), what)
