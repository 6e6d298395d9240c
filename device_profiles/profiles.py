"""Device profiles: one TOML per device kind, loaded into frozen dataclasses (stdlib and edge's format vocabulary)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import tomllib
except ImportError:  # Python 3.10 (e.g. JetPack 6 boards)
    import tomli as tomllib  # type: ignore[no-redef]

# The format vocabulary has one home, edge/artifacts/formats.py (stdlib and edge.core.errors only).
from edge.artifacts.formats import BACKENDS, FORMATS, format_for_backend
from edge.core.errors import EdgekitError

HERE = Path(__file__).resolve().parent

ORT_PROVIDERS = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "CoreMLExecutionProvider",
    "OpenVINOExecutionProvider",
    "CPUExecutionProvider",
)


class ProfileError(EdgekitError, ValueError):
    """A device profile file is missing or has a bad key or value."""


@dataclass(frozen=True)
class BuildTarget:
    format: str
    precision: str

    @property
    def key(self) -> str:
        return f"{self.format}-{self.precision}"


@dataclass(frozen=True)
class RuntimeSetting:
    """One way of running artifacts on the device (benchmarked and served as its own row)."""

    name: str
    backend: str  # litert | onnxruntime
    threads: int = 1
    xnnpack: bool = True  # litert only
    providers: tuple[str, ...] = ("CPUExecutionProvider",)  # onnxruntime only, in fallback order

    @property
    def format(self) -> str:
        return format_for_backend(self.backend)


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    description: str
    arch: str  # aarch64 | x86_64
    targets: tuple[BuildTarget, ...]
    settings: tuple[RuntimeSetting, ...]
    memory_budget_mb: float
    workers: int = 1
    source: str = ""

    def formats(self) -> tuple[str, ...]:
        return tuple(sorted({t.format for t in self.targets}))

    def builds(self, fmt: str, precision: str) -> bool:
        return BuildTarget(fmt, precision) in self.targets

    def settings_for(self, fmt: str) -> tuple[RuntimeSetting, ...]:
        return tuple(s for s in self.settings if s.format == fmt)

    def setting(self, name: str) -> RuntimeSetting:
        """The runtime setting ``name`` (a table row's ``setting``); an error naming the ones it has."""
        for st in self.settings:
            if st.name == name:
                return st
        raise ProfileError(f"profile '{self.name}' has no runtime setting '{name}' "
                           f"(has {[st.name for st in self.settings]}); benchmark with this profile")


_TOP_KEYS = {"name", "description", "arch", "memory_budget_mb", "workers", "build", "runtime"}
_BUILD_KEYS = {"format", "precisions"}
_RUNTIME_KEYS = {"name", "backend", "threads", "xnnpack", "providers"}


def _err(src: str, key: str, why: str) -> ProfileError:
    return ProfileError(f"{src}: '{key}' {why}")


def _take(d: dict[str, Any], key: str, typ: type | tuple[type, ...], src: str, where: str, default: Any = ...):
    if key not in d:
        if default is ...:
            raise _err(src, f"{where}{key}", "is required")
        return default
    v = d[key]
    if isinstance(v, bool) and typ in (int, float, (int, float)):
        raise _err(src, f"{where}{key}", f"must be a number, got {v!r}")
    if not isinstance(v, typ):
        tn = typ.__name__ if isinstance(typ, type) else "/".join(t.__name__ for t in typ)
        raise _err(src, f"{where}{key}", f"must be {tn}, got {type(v).__name__} {v!r}")
    return v


def _unknown(d: dict[str, Any], allowed: set[str], src: str, where: str) -> None:
    extra = sorted(set(d) - allowed)
    if extra:
        raise _err(src, f"{where}{extra[0]}", f"is not a known key; allowed: {sorted(allowed)}")


def parse_profile(data: dict[str, Any], src: str = "<profile>") -> DeviceProfile:
    """Validate a parsed TOML document and build the profile; errors name the key."""
    _unknown(data, _TOP_KEYS, src, "")
    name = _take(data, "name", str, src, "")
    if not name or any(c in name for c in "/\\ "):
        raise _err(src, "name", f"must be a non-empty word without slashes or spaces, got {name!r}")
    arch = _take(data, "arch", str, src, "")
    if arch not in ("aarch64", "x86_64", "armv7l"):
        raise _err(src, "arch", f"must be one of aarch64, x86_64, armv7l, got {arch!r}")
    budget = _take(data, "memory_budget_mb", (int, float), src, "")
    if budget <= 0:
        raise _err(src, "memory_budget_mb", f"must be > 0, got {budget}")
    workers = _take(data, "workers", int, src, "", 1)
    if not 1 <= workers <= 64:
        raise _err(src, "workers", f"must be between 1 and 64, got {workers}")

    targets: list[BuildTarget] = []
    builds = _take(data, "build", list, src, "")
    if not builds:
        raise _err(src, "build", "must list at least one [[build]] table")
    for i, b in enumerate(builds):
        where = f"build[{i}]."
        if not isinstance(b, dict):
            raise _err(src, f"build[{i}]", "must be a table")
        _unknown(b, _BUILD_KEYS, src, where)
        fmt = _take(b, "format", str, src, where)
        if fmt not in FORMATS:
            raise _err(src, f"{where}format", f"must be one of {list(FORMATS)}, got {fmt!r}")
        precs = _take(b, "precisions", list, src, where)
        if not precs:
            raise _err(src, f"{where}precisions", "must not be empty")
        for p in precs:
            if p not in FORMATS[fmt].precisions:
                raise _err(src, f"{where}precisions", f"has {p!r}; {fmt} supports {list(FORMATS[fmt].precisions)}")
            t = BuildTarget(fmt, p)
            if t not in targets:
                targets.append(t)

    settings: list[RuntimeSetting] = []
    runtimes = _take(data, "runtime", list, src, "")
    if not runtimes:
        raise _err(src, "runtime", "must list at least one [[runtime]] table")
    for i, r in enumerate(runtimes):
        where = f"runtime[{i}]."
        if not isinstance(r, dict):
            raise _err(src, f"runtime[{i}]", "must be a table")
        _unknown(r, _RUNTIME_KEYS, src, where)
        backend = _take(r, "backend", str, src, where)
        if backend not in BACKENDS:
            raise _err(src, f"{where}backend", f"must be one of {list(BACKENDS)}, got {backend!r}")
        threads = _take(r, "threads", int, src, where, 1)
        if not 1 <= threads <= 256:
            raise _err(src, f"{where}threads", f"must be between 1 and 256, got {threads}")
        xnn = _take(r, "xnnpack", bool, src, where, True)
        provs = _take(r, "providers", list, src, where, ["CPUExecutionProvider"])
        for p in provs:
            if p not in ORT_PROVIDERS:
                raise _err(src, f"{where}providers", f"has unknown provider {p!r}; known: {list(ORT_PROVIDERS)}")
        if backend == "litert" and "providers" in r:
            raise _err(src, f"{where}providers", "applies to onnxruntime only")
        if backend == "onnxruntime" and "xnnpack" in r:
            raise _err(src, f"{where}xnnpack", "applies to litert only")
        sname = _take(r, "name", str, src, where, f"{backend}-t{threads}")
        if any(s.name == sname for s in settings):
            raise _err(src, f"{where}name", f"repeats {sname!r}; each runtime needs its own name")
        fmt = format_for_backend(backend)
        if not any(t.format == fmt for t in targets):
            raise _err(src, f"{where}backend", f"is {backend} but no [[build]] makes {fmt} artifacts")
        settings.append(RuntimeSetting(sname, backend, threads, xnn, tuple(provs)))

    return DeviceProfile(
        name=name,
        description=str(data.get("description", "")),
        arch=arch,
        targets=tuple(targets),
        settings=tuple(settings),
        memory_budget_mb=float(budget),
        workers=workers,
        source=src,
    )


def builtin_names() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.toml"))


def load_profile(name_or_path: str | os.PathLike) -> DeviceProfile:
    """Load a built-in profile by name, or a user's TOML file by path."""
    s = str(name_or_path)
    path = Path(s)
    # A bare word is a built-in name even when a file or folder of that name is in the cwd.
    if not (s.endswith(".toml") or os.sep in s or "/" in s or (path.is_file() and not (HERE / f"{s}.toml").exists())):
        path = HERE / f"{s}.toml"
        if not path.exists():
            raise ProfileError(f"unknown profile '{s}'; available: {builtin_names()} (or pass a path to a .toml file)")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ProfileError(f"profile file not found: {path}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{path}: not valid TOML ({exc}); fix the syntax") from None
    return parse_profile(data, src=str(path))


def list_profiles() -> list[DeviceProfile]:
    return [load_profile(n) for n in builtin_names()]


def host_profile_name() -> str:
    """The built-in profile that fits the machine this runs on."""
    import platform

    return "desktop-cpu" if platform.machine() in ("x86_64", "AMD64") else "rpi5"
