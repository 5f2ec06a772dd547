"""Small-sample statistics for comparing methods over seeds and samples: mean, sample std, Student-t 95%
intervals, paired differences, binomial (Wilson) and bootstrap intervals, and the words a report uses.

No SciPy: the two-sided 95% Student-t quantiles are tabulated (values from any statistics table)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence

import torch

#: two-sided 95% quantiles t_{0.975, df} for df = 1..30
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
_T975_LARGE = ((40, 2.021), (60, 2.000), (120, 1.980))
Z975 = 1.959964


def t975(df: int) -> float:
    """The two-sided 95% Student-t quantile for ``df`` degrees of freedom (conservative between table rows)."""
    if df < 1:
        raise ValueError("a t interval needs at least 2 values")
    if df <= 30:
        return _T975[df - 1]
    for limit, value in _T975_LARGE:
        if df <= limit:
            return value
    return Z975


def summary(values: Sequence[float]) -> dict[str, float]:
    """mean, sample std (n-1), n and the 95% t interval of the mean (``lo``/``hi``; NaN for one value)."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = statistics.fmean(values)
    if n == 1:
        return {"mean": mean, "std": float("nan"), "n": 1, "lo": float("nan"), "hi": float("nan")}
    std = statistics.stdev(values)
    half = t975(n - 1) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "n": n, "lo": mean - half, "hi": mean + half}


def paired_difference(a: Sequence[float], b: Sequence[float]) -> dict[str, float | str]:
    """``a - b`` paired by position (the same seed): mean, std, 95% t interval, the relative difference to
    ``b``'s mean, and ``verdict``: "resolved" when the interval excludes 0, else "not resolved"."""
    if len(a) != len(b):
        raise ValueError(f"paired values need equal counts, got {len(a)} and {len(b)}")
    d = summary([x - y for x, y in zip(a, b, strict=True)])
    base = statistics.fmean(b)
    d["relative"] = d["mean"] / base if base else float("nan")
    d["verdict"] = verdict(d)
    return d


def verdict(interval: dict[str, float]) -> str:
    lo, hi = interval["lo"], interval["hi"]
    if math.isnan(lo) or math.isnan(hi):
        return "not resolved"
    return "resolved" if lo > 0 or hi < 0 else "not resolved"


def wilson(successes: int, n: int) -> dict[str, float]:
    """A proportion and its 95% Wilson score interval."""
    if n <= 0:
        raise ValueError("no trials")
    p = successes / n
    denom = 1 + Z975**2 / n
    centre = (p + Z975**2 / (2 * n)) / denom
    half = Z975 * math.sqrt(p * (1 - p) / n + Z975**2 / (4 * n * n)) / denom
    return {"mean": p, "n": n, "lo": max(0.0, centre - half), "hi": min(1.0, centre + half)}


def bootstrap(statistic: Callable[[torch.Tensor], float], n: int, *, resamples: int = 200,
              seed: int = 0) -> dict[str, float]:
    """The value of ``statistic(all indices)`` and a percentile-bootstrap 95% interval over ``resamples``
    resamplings (with replacement) of ``n`` indices, seeded."""
    gen = torch.Generator().manual_seed(seed)
    value = statistic(torch.arange(n))
    draws = sorted(statistic(torch.randint(0, n, (n,), generator=gen)) for _ in range(resamples))
    return {"mean": value, "n": n, "lo": draws[int(0.025 * (resamples - 1))],
            "hi": draws[int(math.ceil(0.975 * (resamples - 1)))]}


def fmt_interval(s: dict[str, float], spec: str = "{:.3g}") -> str:
    """``mean [lo, hi]`` (just the mean when there is no interval)."""
    if math.isnan(s.get("lo", float("nan"))):
        return spec.format(s["mean"])
    return f"{spec.format(s['mean'])} [{spec.format(s['lo'])}, {spec.format(s['hi'])}]"
