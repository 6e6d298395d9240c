"""Online slowdown estimate: how much slower than its table the board runs right now (ALERT-style filter).

After every inference the daemon feeds the ratio observed latency / the variant's table
median.  Under normal conditions the ratio hovers around 1; under CPU contention,
thermal throttling or a slower power mode every variant slows by roughly the same
factor, so one scalar shared by all variants tracks it (ALERT, Wan et al., USENIX ATC
2020, models the environment as one global slowdown factor estimated by a Kalman
filter).  The selector then predicts a variant's latency as its table quantile x this
factor: the quantile covers the ordinary spread, the factor the drift.

Because the ratio is observed for whichever variant ran, the estimate recovers on its
own: when the board speeds up again the (faster) variants it moved to report ratios
below the current estimate and the factor comes back down.
"""

from __future__ import annotations

import abc
import math
import threading

from edge.core.errors import UsageError

RATIO_MIN = 0.05  # one absurd sample (a clock hiccup, a page fault storm) must not wreck the estimate
RATIO_MAX = 50.0


def _clip_ratio(ratio: float) -> float | None:
    if not math.isfinite(ratio) or ratio <= 0:
        return None
    return min(max(ratio, RATIO_MIN), RATIO_MAX)


class SlowdownFilter(abc.ABC):
    """A scalar estimate of observed/expected latency, updated after every inference (thread-safe)."""

    name = ""

    def __init__(self, initial: float = 1.0):
        self._initial = float(initial)
        self._lock = threading.Lock()
        self.factor = float(initial)  # read without the lock: a float read is atomic
        self.updates = 0

    @abc.abstractmethod
    def _step(self, ratio: float) -> float: ...

    def update(self, observed_ms: float, expected_ms: float) -> float:
        """Feed one inference; returns the new factor. Non-finite or non-positive inputs are ignored."""
        if not expected_ms or expected_ms <= 0:
            return self.factor
        ratio = _clip_ratio(observed_ms / expected_ms)
        if ratio is None:
            return self.factor
        with self._lock:
            self.factor = self._step(ratio)
            self.updates += 1
            return self.factor

    def reset(self) -> None:
        with self._lock:
            self.factor = self._initial
            self.updates = 0
            self._reset()

    def _reset(self) -> None:
        pass

    def describe(self) -> dict:
        return {"filter": self.name, "factor": self.factor, "updates": self.updates}


class EwmaSlowdown(SlowdownFilter):
    """Exponentially weighted moving average of the ratios (weight ``alpha`` on the newest)."""

    name = "ewma"

    def __init__(self, alpha: float = 0.2, initial: float = 1.0):
        if not 0 < alpha <= 1:
            raise UsageError(f"EWMA alpha must be in (0, 1], got {alpha}")
        super().__init__(initial)
        self.alpha = float(alpha)

    def _step(self, ratio: float) -> float:
        return self.factor + self.alpha * (ratio - self.factor)


class KalmanSlowdown(SlowdownFilter):
    """Scalar Kalman filter on the log of the factor: log-factor is a random walk (variance
    ``q`` per inference) observed through noisy log-ratios (variance ``r``).

    Working in log space makes the noise relative (a 2x slower board also jitters ~2x more)
    and keeps the gain independent of the level, so a jump to 40x is tracked in as few
    inferences as a jump to 1.5x, and the way back down as fast. The gain is high while
    uncertain and settles near sqrt(q/r): a few inferences to follow a step, jitter averaged out."""

    name = "kalman"

    def __init__(self, q: float = 2e-3, r: float = 3e-2, initial: float = 1.0, p0: float = 0.1):
        if q <= 0 or r <= 0:
            raise UsageError(f"Kalman variances must be > 0, got q={q}, r={r}")
        super().__init__(initial)
        self.q, self.r, self._p0 = float(q), float(r), float(p0)
        self.p = float(p0)

    def _reset(self) -> None:
        self.p = self._p0

    def _step(self, ratio: float) -> float:
        p = self.p + self.q
        k = p / (p + self.r)
        self.p = (1.0 - k) * p
        x = math.log(self.factor)
        return math.exp(x + k * (math.log(ratio) - x))

    def describe(self) -> dict:
        d = super().describe()
        d["variance"] = self.p
        return d


class NoSlowdown(SlowdownFilter):
    """Always 1: the table is trusted as measured (used by the baselines)."""

    name = "none"

    def _step(self, ratio: float) -> float:
        return self.factor


FILTERS = {"kalman": KalmanSlowdown, "ewma": EwmaSlowdown, "none": NoSlowdown}


def make_filter(name: str = "kalman", **kw) -> SlowdownFilter:
    try:
        cls = FILTERS[name]
    except KeyError:
        raise UsageError(f"unknown slowdown filter '{name}'; available: {sorted(FILTERS)}") from None
    return cls(**kw)
