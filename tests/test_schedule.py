"""Bit schedules: the built-ins, custom strings, scaling to a step budget, and their errors."""

from __future__ import annotations

import pytest

from fraqat_deploy.quant import BUILTIN, ScheduleError, parse_schedule


def test_fractional_is_the_papers_table_4():
    s = parse_schedule("fractional")
    assert [st.bits for st in s.stages] == [8, 7, 6, 5.5, 5, 4.75, 4.5, 4.25, 4]
    assert [st.duration for st in s.stages] == [1, 1, 1, 1, 1, 2, 2, 2, 14]
    assert s.total_duration == 25 and s.final_bits == 4
    assert s.steps_per_stage(25) == [1, 1, 1, 1, 1, 2, 2, 2, 14]


def test_baselines():
    assert [st.bits for st in parse_schedule("integer").stages] == [8, 7, 6, 5, 4]
    assert [st.bits for st in parse_schedule("simple").stages] == [16, 8, 4]
    vqat = parse_schedule("constant:4")
    assert [st.bits for st in vqat.stages] == [4] and vqat.steps_per_stage(90) == [90]
    assert parse_schedule("vqat").stages == vqat.stages
    ptq = parse_schedule("ptq")
    assert not ptq.trains and ptq.final_bits == 4 and ptq.steps_per_stage(100) == [0]
    # every progressive built-in spends the same share of compute at 4 bits
    for name in ("fractional", "integer", "simple"):
        assert BUILTIN[name].stages[-1].duration / BUILTIN[name].total_duration == pytest.approx(14 / 25)


def test_custom_string_and_scaling():
    s = parse_schedule("8:1, 6:1,5.5:2,4:4")
    assert [(st.bits, st.duration) for st in s.stages] == [(8, 1), (6, 1), (5.5, 2), (4, 4)]
    assert s.steps_per_stage(100) == [13, 12, 25, 50]  # 12.5, 12.5, 25, 50: ties go to the earlier stage
    assert s.spec() == "8:1,6:1,5.5:2,4:4"
    assert s.boundaries(8) == [(0, 1, 8), (1, 2, 6), (2, 4, 5.5), (4, 8, 4)]
    assert s.stage_at(3, 8) == 2


@pytest.mark.parametrize("total", [9, 10, 37, 90, 1000])
def test_scaled_steps_sum_to_budget_and_keep_every_stage(total):
    steps = parse_schedule("fractional").steps_per_stage(total)
    assert sum(steps) == total and min(steps) >= 1
    assert steps[-1] == max(steps)


def test_fractional_at_90_steps():
    assert parse_schedule("fractional").steps_per_stage(90) == [4, 4, 4, 4, 3, 7, 7, 7, 50]


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("8:1,oops", "'oops' is not <bits>:<duration>"),
        ("8:1,1:2", "outside [2, 16]"),
        ("constant:17", "outside [2, 16]"),
        ("8:0", "must be > 0"),
        ("", "is not <bits>:<duration>"),
        ("fractionall", "is not <bits>:<duration>"),
    ],
)
def test_bad_schedules_show_the_accepted_form(text, fragment):
    with pytest.raises(ScheduleError) as e:
        parse_schedule(text)
    assert fragment in str(e.value)
    assert "'8:1,6:1,5.5:2,4:4'" in str(e.value)


def test_too_few_steps():
    with pytest.raises(ScheduleError, match="at least 9 steps"):
        parse_schedule("fractional").steps_per_stage(5)


def test_too_few_steps_for_the_schedule_is_a_one_line_cli_error(tmp_path):
    from typer.testing import CliRunner

    from fraqat_deploy.cli import app

    result = CliRunner().invoke(app, ["train", "digits", "--schedule", "fractional", "--steps", "8", "--out",
                                      str(tmp_path / "r")])
    assert result.exit_code == 2 and "has 9 stages, more than --steps 8" in result.output
    assert "Fix: give --steps 9 or more" in result.output and len(result.output.strip().splitlines()) == 1
    assert "Traceback" not in result.output
    assert not (tmp_path / "r").exists()  # refused before any work: nothing written
