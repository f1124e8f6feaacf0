"""What a user sees in the terminal: one progress line per phase, warnings that need action,
the final table. Everything else (Ray's own output, worker logs, library warnings) goes to
the run folder's `logs/driver.log` and Ray's session logs (`--verbose` shows it all instead).

    console.phase("teacher fine-tune", "3000 NLI pairs, 282 steps")   # a new phase
    console.progress("bt", step, total, ["loss 0.6931", "acc 0.55"])   # a bar (TTY) or a line per ~10%
    console.count("teacher maps", 16, unit="pairs")                    # a counter without a total
    console.warn("step 12 skipped: non-finite loss")
    console.result_table(text)

The same calls work anywhere: in the driver they print; in a Ray worker they go, fire and
forget, to a small named actor (the progress board) that a driver thread renders, since the
workers' own stdout stays in their log files (`ray.init(log_to_driver=False)`). With no
board (Ray not started, a test's Ray, `--verbose`) they print where they are. Ray is
imported only by the board functions at the end, which run where Ray already is.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from idrm_ray.console.view import ProgressView

BOARD_NAME = "idrm_console_board"


# ----------------------------------------------------------------------------- this process


@dataclass
class _State:
    verbose: bool = True  # outside a CLI session (tests, library use): print everything, as before
    in_session: bool = False
    out: TextIO | None = None  # the terminal while stdout/stderr go to driver.log
    err: TextIO | None = None
    saved_fds: tuple[int, int] | None = None
    log_path: Path | None = None
    top_name: str = ""  # the run folder's name, left off progress labels
    view: ProgressView | None = None
    on_close: list = field(default_factory=list)
    pump: threading.Thread | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    board: object = None  # this driver's board (it renders), or a worker's handle to it
    looked_up: float = -1e9


_state = _State()
_lock = threading.RLock()


def _out() -> TextIO:
    return _state.out or sys.stdout


def _view() -> ProgressView:
    if _state.view is None:
        out = _out()
        live = out.isatty() and not _state.verbose
        _state.view = ProgressView(live=live, every_update=_state.verbose, width=_columns(out) if live else 0)
    return _state.view


def _columns(out: TextIO) -> int:
    try:
        return os.get_terminal_size(out.fileno()).columns
    except (OSError, ValueError):  # not a real terminal after all: lines are not cut
        return 0


def _render(event: tuple) -> None:
    kind, *args = event
    with _lock:
        view = _view()
        if kind == "progress":
            label, step, total, fields, now, unit = args
            text = view.progress(_short(label), step, total, fields, now, unit=unit)
        elif kind == "count":
            label, n, now, unit = args
            text = view.count(_short(label), n, now, unit=unit)
        elif kind == "phase":
            text = view.close_all() + view.message(args[0])
        else:
            text = view.message(args[0])
        if text:
            _out().write(text)
            _out().flush()


def _short(label: str) -> str:
    prefix = f"{_state.top_name}/"
    return label[len(prefix):] if _state.top_name and label.startswith(prefix) else label


def _emit(event: tuple) -> None:
    board = None if _state.pump is not None else _remote_board()
    if board is None:
        _render(event)
    else:
        board.post.remote(event)  # fire and forget: the driver renders it


# ----------------------------------------------------------------------------- the API


def info(text: str) -> None:
    _emit(("message", text))


def phase(name: str, detail: str = "") -> None:
    """A new phase of the job: the progress of the last one ends here."""
    _drain()
    _emit(("phase", f"[idrm] {name}: {detail}" if detail else f"[idrm] {name}"))


def warn(text: str) -> None:
    """A warning that needs the user's action (library warnings go to the logs)."""
    _emit(("message", f"[idrm] WARNING: {text}"))


def progress(label: str, step: int, total: int, fields: list[str]) -> None:
    """Step `step` of `total` of a task (e.g. a training run) with its latest figures."""
    _emit(("progress", label, int(step), int(total), list(fields), time.time(), "steps"))


def count(label: str, n: int, *, unit: str = "items") -> None:
    """`n` more items of a task without a known total (e.g. teacher maps of a stream)."""
    _emit(("count", label, int(n), time.time(), unit))


def result_table(text: str) -> None:
    """The job's result: printed after every running task's last line."""
    _drain()
    _emit(("phase", text.rstrip("\n")))


def error(text: str) -> None:
    """One line on the terminal's stderr (bad input), also while stderr goes to the log."""
    err = _state.err or sys.stderr
    print(text, file=err, flush=True)


def verbose() -> bool:
    return _state.verbose


def quiet_session() -> bool:
    """True inside a CLI session without --verbose: Ray's output must stay off the console."""
    return _state.in_session and not _state.verbose


# ----------------------------------------------------------------------------- the CLI session


@contextlib.contextmanager
def session(*, verbose: bool = False):
    """One CLI command. Quiet (default): once the run folder is known (`run_folder`), this
    process's stdout and stderr (Ray, libraries, warnings, C++ logs) go to its driver.log and
    the console keeps the terminal. `verbose`: nothing is redirected, every line shows."""
    _state.__init__(verbose=verbose, in_session=True)
    try:
        yield
    except BaseException:
        if _state.saved_fds:
            traceback.print_exc()  # into driver.log; the interpreter prints it on the terminal too
        raise
    finally:
        _close()


def run_folder(run_dir: str | Path, line: str) -> None:
    """The job's first line; in a quiet session also where the logs go from here on."""
    _state.top_name = Path(run_dir).name
    info(line)
    if quiet_session() and _state.log_path is None and _redirect(Path(run_dir) / "logs" / "driver.log"):
        info(f"[idrm] logs: {_state.log_path} (Ray, libraries, warnings; --verbose shows them here)")


def ray_logs(logs_dir: str | Path) -> None:
    """Where Ray's worker logs are (its session folder), linked from the run folder's logs/."""
    if _state.log_path is None:
        return
    link = _state.log_path.parent / "ray"
    with contextlib.suppress(OSError):
        if not link.exists():
            link.symlink_to(Path(logs_dir), target_is_directory=True)
    info(f"[idrm] Ray worker logs: {logs_dir} (also {link})")


def on_close(fn) -> None:
    """`fn()` when the session ends, before the terminal gets stdout back (e.g. ray.shutdown)."""
    _state.on_close.append(fn)


def _redirect(path: Path) -> bool:
    """This process's fds 1 and 2 into `path`; False (nothing done) when someone else has
    replaced sys.stdout or sys.stderr (pytest's capture): their streams are left alone."""
    if sys.stdout is not sys.__stdout__ or sys.stderr is not sys.__stderr__:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    _state.log_path = path
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    _state.out = os.fdopen(os.dup(saved[0]), "w", buffering=1)
    _state.err = os.fdopen(os.dup(saved[1]), "w", buffering=1)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    _state.saved_fds = saved
    return True


def _close() -> None:
    _drain()
    stop_board()
    with _lock:
        if _state.view is not None:
            text = _state.view.close_all()
            if text:
                _out().write(text)
                _out().flush()
    for fn in reversed(_state.on_close):
        with contextlib.suppress(Exception):
            fn()
    if _state.saved_fds:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, saved in zip((1, 2), _state.saved_fds):
            os.dup2(saved, fd)
            os.close(saved)
        _state.out.close()
        _state.err.close()
    _state.__init__()


# ----------------------------------------------------------------------------- the Ray part


class ProgressBoard:
    """A named Ray actor: workers post events, the driver's pump takes them in order."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def post(self, event: tuple) -> None:
        self.events.append(event)

    def take(self) -> list[tuple]:
        events, self.events = self.events, []
        return events


def start_board() -> None:
    """In the driver, once Ray runs: create the board and a thread that renders its events."""
    import ray

    if _state.pump is not None:
        return
    actor = ray.remote(num_cpus=0)(ProgressBoard)
    _state.board = actor.options(name=BOARD_NAME, get_if_exists=True).remote()
    _state.stop.clear()
    _state.pump = threading.Thread(target=_pump, name="idrm console board", daemon=True)
    _state.pump.start()


def stop_board() -> None:
    ray, pump, board = sys.modules.get("ray"), _state.pump, _state.board
    if pump is None:
        return
    _state.stop.set()
    pump.join(timeout=5)
    _state.pump = _state.board = None
    with contextlib.suppress(Exception):
        ray.kill(board)


def _pump() -> None:
    while not _state.stop.wait(0.3):
        _drain()


def _drain() -> None:
    """Render what the workers posted so far (this driver's board only)."""
    ray, board = sys.modules.get("ray"), _state.board
    if _state.pump is None or board is None or ray is None:
        return
    with _lock:
        try:
            events = ray.get(board.take.remote(), timeout=30)
        except Exception:  # noqa: BLE001 - Ray shutting down: the console must not fail the job
            return
        for event in events:
            _render(event)


def _remote_board():
    """The driver's board from a worker process, or None (no Ray here, or no board)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    if _state.board is None and time.monotonic() - _state.looked_up > 30:
        _state.looked_up = time.monotonic()
        try:
            _state.board = ray.get_actor(BOARD_NAME)
        except ValueError:
            _state.board = None
    return _state.board
