"""The device header of a latency table: CPU model, cores, governor, OS, runtime versions, date."""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

# What the host is has one home, device_profiles.host; EMULATION_ENV stays importable from here.
from device_profiles.host import EMULATION_ENV, emulation, usable_cores  # noqa: F401


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace").strip().strip("\x00")
    except OSError:
        return ""


def cpu_model() -> str:
    """A readable CPU (or board) name: x86 'model name', ARM 'Hardware'/'Model' or the device tree."""
    info = _read("/proc/cpuinfo")
    fields: dict[str, str] = {}
    for line in info.splitlines():
        key, sep, val = line.partition(":")
        if sep and key.strip() not in fields and val.strip():
            fields[key.strip()] = val.strip()
    cpu = fields.get("model name") or fields.get("Processor") or fields.get("cpu model") or ""
    board = _read("/proc/device-tree/model") or fields.get("Model", "") or fields.get("Hardware", "")
    if not cpu and fields.get("CPU part"):
        cpu = f"ARM part {fields['CPU part']}"
    name = " / ".join(x for x in (board, cpu) if x)
    return name or platform.processor() or platform.machine() or "unknown"


def device_name() -> str:
    """The CPU name a table is labelled with; under emulation it says so, so it is never read as a board's."""
    emu = emulation()
    return f"EMULATED aarch64: {emu} (not board timings)" if emu else cpu_model()


def cores() -> int:
    return os.cpu_count() or 1


def governor() -> str:
    """The cpufreq scaling governor(s), '' when the kernel does not expose them (VMs, containers)."""
    govs = []
    for p in sorted(Path("/sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq/scaling_governor")):
        g = _read(str(p))
        if g:
            govs.append(g)
    uniq = sorted(set(govs))
    return ",".join(uniq)


def cpu_max_mhz() -> float | None:
    khz = _read("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    try:
        return int(khz) / 1000.0
    except ValueError:
        return None


def os_name() -> str:
    pretty = ""
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            pretty = line.split("=", 1)[1].strip().strip('"')
    kernel = f"{platform.system()} {platform.release()}"
    return f"{pretty} ({kernel})" if pretty else kernel


def memory_total_mb() -> float | None:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            try:
                return int(line.split()[1]) / 1024.0
            except (IndexError, ValueError):
                return None
    try:
        import psutil

        return psutil.virtual_memory().total / 2**20
    except Exception:
        return None


def runtime_versions(backends: Iterable[str] = ("litert", "onnxruntime")) -> dict[str, str]:
    """Versions of numpy and of each named backend's runtime ('not installed' when missing)."""
    import numpy as np

    from edge.backends import BackendUnavailable, get_backend

    out = {"numpy": np.__version__}
    for name in backends:
        try:
            out[name] = get_backend(name).version()
        except BackendUnavailable:
            out[name] = "not installed"
    return out


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def device_info() -> dict[str, Any]:
    """Everything the header records about the machine (no runtime versions)."""
    return {
        "cpu_model": device_name(),
        "cores": cores(),
        "governor": governor(),
        "os": os_name(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "extra": {
            "usable_cores": usable_cores(),
            "cpu_max_mhz": cpu_max_mhz(),
            "memory_total_mb": memory_total_mb(),
            "emulation": emulation(),
        },
    }


if __name__ == "__main__":
    import json

    info = device_info()
    info["runtime_versions"] = runtime_versions()
    info["date"] = now_iso()
    print(json.dumps(info, indent=2))
