"""The console's rendering, pure (no I/O): progress events in, terminal text out."""
from __future__ import annotations

from dataclasses import dataclass, field

TENTHS = 10  # a progress line per 1/TENTHS of a task when the output is not a terminal
COUNT_EVERY_S = 300.0  # a counter's line (no total) at most this often when not a terminal
BAR_WIDTH = 20


@dataclass
class _Task:
    label: str
    total: int | None
    step: int = 0
    fields: list[str] = field(default_factory=list)
    t0: float = 0.0
    step0: int = 0
    now: float = 0.0
    shown_bucket: int = -1
    shown_at: float = 0.0
    shown_step: int = -1  # the step of the last line printed (off a terminal)
    unit: str = "steps"


def _duration(seconds: float) -> str:
    seconds = int(round(max(seconds, 0.0)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes}m{seconds:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


class ProgressView:
    """Pure rendering: turns events into text. `live=True` (a terminal): the running tasks are
    a block of lines redrawn in place; otherwise one line per ~10% of a task
    (`TENTHS`), or every update with `every_update` (--verbose, as the console was before)."""

    def __init__(self, *, live: bool, every_update: bool = False, width: int = 0) -> None:
        self.live, self.every_update = live, every_update
        self.width = width  # live lines are cut to the terminal's width: a wrapped line breaks the redraw
        self.tasks: dict[str, _Task] = {}
        self.drawn = 0  # lines of the live block now on screen

    def message(self, text: str) -> str:
        return self._around_block(text + "\n")

    def progress(self, label: str, step: int, total: int | None, fields: list[str], now: float,
                 unit: str = "steps") -> str:
        task = self.tasks.get(label)
        if task is None or step < task.step:  # new, or restarted from a checkpoint
            task = self.tasks[label] = _Task(label, total, t0=now, step0=step, shown_at=now, unit=unit)
        task.step, task.total, task.fields, task.now = step, total, list(fields), now
        if total and step >= total:
            del self.tasks[label]
            return self._around_block(self.line(task) + "\n")
        if self.live:
            return self._around_block("")
        return self._maybe_line(task)

    def count(self, label: str, n: int, now: float, unit: str = "items") -> str:
        task = self.tasks.get(label)
        if task is None:  # the rate counts from the first batch's arrival
            task = self.tasks[label] = _Task(label, None, t0=now, shown_at=now, unit=unit)
        return self.progress(label, task.step + n, None, [], now, unit=unit)

    def close_all(self) -> str:
        """Final lines of the tasks still running (a counter, a run capped before its total)."""
        running = [t for t in self.tasks.values() if self.live or t.shown_step != t.step]
        text = "".join(self.line(t) + "\n" for t in running)
        self.tasks.clear()
        return self._around_block(text)

    def line(self, task: _Task) -> str:
        elapsed = task.now - task.t0
        if not task.total:
            rate = (task.step - task.step0) / elapsed if elapsed > 0 else 0.0
            return f"  {task.label}: {task.step:,} {task.unit} ({rate:.1f}/s, {_duration(elapsed)})"
        done = min(task.step / task.total, 1.0)
        head = f"  {task.label}: step {task.step}/{task.total} ({done:.0%})"
        if self.live:
            filled = int(done * BAR_WIDTH)
            head = f"  {task.label} [{'#' * filled}{'-' * (BAR_WIDTH - filled)}] step {task.step}/{task.total}"
        parts = [head, *task.fields]
        moved = task.step - task.step0
        if task.step >= task.total:
            parts.append(f"done in {_duration(elapsed)}")
        elif moved > 0 and elapsed > 0:
            parts.append(f"ETA {_duration((task.total - task.step) * elapsed / moved)}")
        return " | ".join(parts)

    def _maybe_line(self, task: _Task) -> str:
        if task.total and not self.every_update:
            bucket = task.step * TENTHS // task.total  # integers: 90/300 is exactly the 3rd tenth
            if bucket <= task.shown_bucket:
                return ""
            task.shown_bucket = bucket
        elif not task.total:
            if task.now - task.shown_at < COUNT_EVERY_S:
                return ""
            task.shown_at = task.now
        task.shown_step = task.step
        return self.line(task) + "\n"

    def _around_block(self, text: str) -> str:
        """`text` printed above the live block, which is redrawn below it (terminal only)."""
        if not self.live:
            return text
        up = f"\x1b[{self.drawn}F\x1b[J" if self.drawn else ""
        block = [self.line(t)[: self.width - 1] if self.width else self.line(t) for t in self.tasks.values()]
        self.drawn = len(block)
        return up + text + "".join(b + "\n" for b in block)
