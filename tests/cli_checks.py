"""Assertions shared by the CLI tests (imported by name: tests/ is on sys.path through its conftest)."""

from __future__ import annotations


def one_line_error(result) -> str:
    """The CLI's contract for bad input: non-zero exit, no traceback, one line "error: ... Fix: ..."."""
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Fix: " in lines[0], result.output
    return lines[0]
