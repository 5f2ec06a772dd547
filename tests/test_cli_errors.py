"""Bad input at the command line: one line naming the fix, a non-zero exit, no traceback."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from cli_checks import one_line_error
from typer.testing import CliRunner

from fraqat_deploy import cli
from fraqat_deploy.cli import app

runner = CliRunner()


def test_an_unwritable_output_folder_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    line = one_line_error(runner.invoke(app, ["generate", "sana", "--tiny", "--prompt", "x",
                                               "--out", str(blocker / "img.png")]))
    assert str(blocker) in line and "check the path" in line


def test_a_full_disk_names_the_fix() -> None:
    line = cli._os_error_line(OSError(errno.ENOSPC, "No space left on device", "/runs/qs/export/x.onnx"))
    assert line.startswith("No space left on device (/runs/qs/export/x.onnx)") and "free space" in line
    assert "choose a folder" in cli._os_error_line(PermissionError(errno.EACCES, "Permission denied", "/x"))


def test_a_missing_apk_is_reported_before_looking_for_a_phone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fraqat_deploy.device.adb as adb

    def no_phone_lookup(*args: object, **kwargs: object) -> None:
        raise AssertionError("looked for a phone although the APK is missing")

    monkeypatch.setattr(adb, "select_device", no_phone_lookup)
    line = one_line_error(runner.invoke(app, ["app", "install", "--apk", str(tmp_path / "app.apk")]))
    assert "no APK at" in line and "assembleDebug" in line


@pytest.mark.parametrize("option", ["--steps", "--max-new-tokens", "--runs"])
def test_bench_counts_below_one_are_refused(option: str, tmp_path: Path) -> None:
    result = runner.invoke(app, ["bench", "digits", "--run", str(tmp_path), option, "0"])
    assert result.exit_code == 2 and option in result.output
