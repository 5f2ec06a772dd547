"""Statistics of the method benchmark: t intervals, paired differences and the words they come with."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from fraqat_deploy.quality.intervals import bootstrap, paired_difference, summary, t975, verdict, wilson


def test_t_interval_of_known_values():
    s = summary([1.0, 2.0, 3.0, 4.0, 5.0])
    assert s["mean"] == 3.0 and s["std"] == pytest.approx(statistics.stdev([1, 2, 3, 4, 5]))
    half = 2.776 * s["std"] / math.sqrt(5)  # t(0.975, 4)
    assert (s["lo"], s["hi"]) == (pytest.approx(3 - half), pytest.approx(3 + half))
    assert math.isnan(summary([2.0])["lo"])
    assert t975(1000) == pytest.approx(1.96, abs=1e-3) and t975(35) == 2.021
    with pytest.raises(ValueError):
        summary([])


def test_paired_difference_resolves_a_consistent_shift_only():
    base = [1.0, 5.0, 2.0, 8.0, 3.0]  # large spread between seeds
    shifted = [b - 0.1 for b in base]  # ...but the same shift on each seed
    d = paired_difference(shifted, base)
    assert d["mean"] == pytest.approx(-0.1) and d["verdict"] == "resolved" and d["hi"] < 0
    noisy = [b + e for b, e in zip(base, [0.3, -0.2, 0.1, -0.3, 0.1], strict=True)]
    assert paired_difference(noisy, base)["verdict"] == "not resolved"
    assert verdict({"lo": float("nan"), "hi": 1.0}) == "not resolved"
    with pytest.raises(ValueError, match="equal counts"):
        paired_difference([1.0], [1.0, 2.0])


def test_wilson_and_bootstrap_intervals():
    w = wilson(490, 500)
    assert w["lo"] < 0.98 < w["hi"] <= 1.0 and w["hi"] - w["lo"] < 0.03
    assert wilson(500, 500)["hi"] == 1.0 and wilson(500, 500)["lo"] > 0.99
    values = torch.randn(400, generator=torch.Generator().manual_seed(0)) + 2.0
    b = bootstrap(lambda idx: float(values[idx].mean()), 400, resamples=200, seed=1)
    assert b["lo"] < b["mean"] < b["hi"] and b["hi"] - b["lo"] == pytest.approx(2 * 1.96 / 20, rel=0.3)
