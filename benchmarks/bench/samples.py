"""The raw per-run times beside a latency table: ``TABLE.samples.npz``, one array (ms) per variant."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np

from edge.core.atomic import atomic_write_bytes

# Raw samples kept per row in the sidecar; the table's statistics always use every sample.
MAX_STORED_SAMPLES = 5000


def samples_path(table_path: str | Path) -> Path:
    """``TABLE.json`` -> ``TABLE.samples.npz`` (raw per-run times in ms, one array per variant)."""
    p = Path(table_path)
    return p.with_name(p.stem + ".samples.npz")


def thin_samples(ms: np.ndarray, limit: int = MAX_STORED_SAMPLES) -> np.ndarray:
    """At most ``limit`` of the samples, evenly spaced in run order (plenty for a CDF plot)."""
    ms = np.asarray(ms)
    if ms.size <= limit:
        return ms
    idx = np.linspace(0, ms.size - 1, limit).round().astype(np.int64)
    return ms[idx]


def save_samples(table_path: str | Path, samples: dict[str, np.ndarray]) -> Path:
    """Rewrite the sidecar atomically (uncompressed: timing noise does not compress, and it is rewritten per row)."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v, dtype=np.float32) for k, v in samples.items()})
    return atomic_write_bytes(samples_path(table_path), buf.getvalue())


def load_samples(table_path: str | Path) -> dict[str, np.ndarray]:
    """The sidecar's arrays; {} when it is missing or unreadable (the samples are optional)."""
    p = samples_path(table_path)
    if not p.exists():
        return {}
    try:
        with np.load(p, allow_pickle=False) as z:
            return {k: np.asarray(z[k], dtype=np.float64) for k in z.files}
    except Exception as exc:  # zipfile/ValueError/OSError from a truncated file
        print(f"warning: ignoring unreadable samples file {p} ({exc})", file=sys.stderr)
        return {}
