"""Console output shared by every stage: one Rich console (stderr for progress), plain when not a terminal.

On a terminal, long stages draw progress bars. In a log file (output not a terminal) bars would be frames of
escape codes, so the same progress becomes a plain line at a modest rate (``LOG_PERIOD_S``): what is running,
how far, how long it took so far and about how long is left.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

#: piped or captured output (logs, CI, tests) is not wrapped at 80 columns: tables stay one row per line
_WIDTH = None if sys.stdout.isatty() else 160
console = Console(stderr=True, highlight=False, width=_WIDTH)
out = Console(highlight=False, width=_WIDTH)

#: seconds between two progress lines of one task in a log
LOG_PERIOD_S = 30.0
#: below this many units (the quick start's 7 stages) the units differ too much in length for a time-left guess
ETA_MIN_UNITS = 20
#: the CLI turns progress on; library calls (tests, scripts) stay quiet unless they pass their own display
_settings = {"log_progress": False}
_active: list[Progress] = []  # the displays open now, innermost last: nested stages add their task to it


def enable_progress(on: bool = True) -> None:
    _settings["log_progress"] = on


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class LogProgress(Progress):
    """The Progress API, written as plain lines to the console instead of a live display."""

    def __init__(self, *columns, period_s: float | None = None, **kwargs) -> None:
        kwargs["disable"] = True  # no live display; the lines below are the output
        super().__init__(*columns, **kwargs)
        self._period = period_s
        self._marks: dict[TaskID, dict[str, float]] = {}

    def add_task(self, description: str, start: bool = True, total: float | None = 100.0, completed: int = 0,
                 visible: bool = True, **fields) -> TaskID:
        fields.setdefault("info", "")
        task_id = super().add_task(description, start=start, total=total, completed=completed, visible=visible,
                                   **fields)
        now = time.monotonic()
        self._marks[task_id] = {"t0": now, "last": now, "done0": float(completed), "lines": 0}
        return task_id

    def update(self, task_id: TaskID, **kwargs) -> None:
        super().update(task_id, **kwargs)
        self._maybe_line(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._maybe_line(task_id)

    def _maybe_line(self, task_id: TaskID) -> None:
        mark = self._marks.get(task_id)
        if mark is None:
            return
        task = self._tasks[task_id]
        now = time.monotonic()
        period = LOG_PERIOD_S if self._period is None else self._period
        finished = task.total is not None and task.completed >= task.total
        if finished:
            seen = mark["lines"] or now - mark["t0"] >= period  # a task the log saw running, or a long one
            if seen and not mark.get("ended"):
                mark["ended"] = 1
                self._line(task, mark, now, finished=True)
            return
        if now - mark["last"] >= period:
            self._line(task, mark, now, finished=False)

    def _line(self, task, mark: dict[str, float], now: float, *, finished: bool) -> None:
        mark["last"], mark["lines"] = now, mark["lines"] + 1
        elapsed = now - mark["t0"]
        parts = [f"{task.description}:"]
        if task.total:
            parts.append(f"{task.completed:g}/{task.total:g} ({task.completed / task.total:.0%})")
        info = str(task.fields.get("info", "")).strip()
        if info:
            parts.append(info)
        parts.append(f"- {_duration(elapsed)} elapsed")
        done = task.completed - mark["done0"]
        if finished:
            parts.append("- done")
        elif task.total and task.total >= ETA_MIN_UNITS and done > 0:
            left = (task.total - task.completed) * elapsed / done
            parts.append(f"- about {_duration(left)} left")
        console.print(f"[{time.strftime('%H:%M:%S')}] " + " ".join(parts), markup=False, highlight=False,
                      soft_wrap=True)


def progress(disable: bool = False) -> Progress:
    """Bars on a terminal; progress lines in a log (when the CLI turned progress on); nothing when disabled."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
    )
    if not disable and not console.is_terminal and _settings["log_progress"]:
        return _Tracked(LogProgress(*columns, console=console))
    return _Tracked(Progress(*columns, console=console, disable=disable or not console.is_terminal,
                             transient=False))


class _Tracked:
    """A Progress that, while open, is where nested stages (``ui.task``) add their own task."""

    def __init__(self, inner: Progress) -> None:
        self._inner = inner

    def __enter__(self) -> Progress:
        self._inner.__enter__()
        _active.append(self._inner)
        return self._inner

    def __exit__(self, *exc) -> None:
        if _active and _active[-1] is self._inner:
            _active.pop()
        self._inner.__exit__(*exc)

    def __getattr__(self, name):
        return getattr(self._inner, name)


@contextlib.contextmanager
def task(description: str, total: float | None) -> Iterator[Callable[..., None]]:
    """Progress of one stage's loop (data generation, export, compile): ``with task("x", n) as tick: tick(info=)``.

    Inside an open display (the quick start's, training's) the task joins it; otherwise it opens its own."""
    def run(bar: Progress) -> Iterator[Callable[..., None]]:
        task_id = bar.add_task(description, total=total, info="")

        def tick(advance: float = 1, info: str | None = None) -> None:
            if info is None:
                bar.advance(task_id, advance)
            else:
                bar.update(task_id, advance=advance, info=info)

        try:
            yield tick
        finally:
            bar.update(task_id, visible=False)

    if _active:
        yield from run(_active[-1])
        return
    with progress(disable=not _settings["log_progress"]) as bar:
        yield from run(bar)


#: prompts longer than this are shown shortened (the full text is in the run's files)
PROMPT_SHOWN = 80


def shown_prompt(prompt: str) -> str:
    return prompt if len(prompt) <= PROMPT_SHOWN else f"{prompt[:PROMPT_SHOWN - 3]}... ({len(prompt):,} characters)"


def prompt_cut_notes(parts: dict, prompts: list[str]) -> list[str]:
    """One note per prompt the model's tokenizer cuts to its length (``max_tokens`` or ``seq_len``)."""
    tokenizer = parts.get("tokenizer")
    limit = parts.get("max_tokens") or parts.get("seq_len")
    if tokenizer is None or not limit:
        return []
    notes = []
    for prompt in dict.fromkeys(prompts):
        try:
            n = len(tokenizer(prompt)["input_ids"])
        except Exception:  # a tokenizer without the usual call: no note rather than a failure
            continue
        if n > int(limit):
            notes.append(f"note: the prompt '{shown_prompt(prompt)}' is {n:,} tokens; the model reads only the first "
                         f"{int(limit)} (the rest was cut)")
    return notes
