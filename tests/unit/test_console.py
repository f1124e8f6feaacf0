"""The console (idrm_ray/console/): what a progress task prints on a terminal and off it,
and the session that sends everything else to the run folder's driver.log."""
from __future__ import annotations

import io
import subprocess
import sys
import textwrap

from idrm_ray import console
from idrm_ray.console import ProgressView


def _feed(view: ProgressView, steps, total: int, t_per_step: float = 1.0) -> str:
    return "".join(view.progress("bt", s, total, [f"loss {1 / (s + 1):.3f}"], now=s * t_per_step) for s in steps)


def test_off_a_terminal_a_task_prints_a_line_per_tenth():
    """300 updates of a 300-step run: the first, one per 10% crossed, and the last (11 lines)."""
    lines = _feed(ProgressView(live=False), range(1, 301), 300).splitlines()
    assert len(lines) == 11, lines
    assert lines[0].startswith("  bt: step 1/300 (0%) | loss 0.500")
    assert [line.split()[2] for line in lines[1:]] == [f"{30 * k}/300" for k in range(1, 11)]
    # 30 steps at 1 s each are done by step 30: 270 steps left at 1 step/s.
    assert lines[1].endswith("ETA 4m30s"), lines[1]
    assert lines[-1].endswith("| done in 4m59s"), lines[-1]


def test_sparse_updates_print_once_per_tenth_they_reach():
    # log_every larger than 10% of the run: every update is a new tenth, each printed once
    lines = _feed(ProgressView(live=False), [40, 80, 120, 160, 200], 200).splitlines()
    assert [line.split()[2] for line in lines] == ["40/200", "80/200", "120/200", "160/200", "200/200"]


def test_verbose_prints_every_update():
    assert len(_feed(ProgressView(live=False, every_update=True), range(1, 21), 100).splitlines()) == 20


def test_on_a_terminal_the_running_tasks_are_redrawn_in_place():
    view = ProgressView(live=True)
    first = view.progress("id", 10, 100, ["loss 1.0"], now=0.0)
    assert first == "  id [##------------------] step 10/100 | loss 1.0\n"  # nothing to erase yet
    second = view.progress("id", 20, 100, ["loss 0.9"], now=10.0)
    assert second.startswith("\x1b[1F\x1b[J  id [####----------------] step 20/100 | loss 0.9 | ETA 1m20s")
    # a message goes above the block, which is drawn again under it
    assert view.message("[idrm] note") == "\x1b[1F\x1b[J[idrm] note\n" + second.removeprefix("\x1b[1F\x1b[J")
    # the last step leaves a final line and an empty block
    done = view.progress("id", 100, 100, ["loss 0.5"], now=90.0)
    assert done == "\x1b[1F\x1b[J  id [####################] step 100/100 | loss 0.5 | done in 1m30s\n"
    assert view.tasks == {} and view.drawn == 0


def test_a_counter_without_total_shows_its_rate_on_close():
    view = ProgressView(live=False)
    quiet = "".join(view.count("teacher maps", 16, now=float(t), unit="pairs") for t in range(10))
    assert quiet == ""  # under COUNT_EVERY_S (5 min): nothing yet off a terminal
    assert view.close_all() == "  teacher maps: 160 pairs (17.8/s, 9s)\n"


def test_a_restarted_task_starts_its_timing_again():
    view = ProgressView(live=False)
    _feed(view, range(1, 51), 100)
    again = view.progress("bt", 40, 100, ["loss 0.1"], now=1000.0)  # resumed from a checkpoint
    assert again.startswith("  bt: step 40/100 (40%)") and "ETA" not in again


def test_outside_a_session_calls_print_to_stdout(capsys, monkeypatch):
    # From a fresh view: a test earlier in this process may have left a counter open (test_cluster
    # runs the teacher stage here for its reference fingerprints; only a next phase closes it).
    monkeypatch.setattr(console._state, "view", None)
    console.phase("teacher fine-tune", "tiny")
    console.progress("x/bt", 5, 10, ["loss 0.7"])
    console.warn("look at this")
    console.result_table("table")
    out = capsys.readouterr().out.splitlines()
    assert out == ["[idrm] teacher fine-tune: tiny", "  x/bt: step 5/10 (50%) | loss 0.7",
                   "[idrm] WARNING: look at this", "table"]


def test_a_session_sends_stdout_and_stderr_to_driver_log(tmp_path):
    """In a fresh interpreter (the session moves file descriptors 1 and 2): library output and
    warnings land in <run>/logs/driver.log; console lines and errors stay on the terminal."""
    code = textwrap.dedent(f"""
        import sys, warnings
        from idrm_ray import console
        with console.session(verbose=False):
            console.run_folder({str(tmp_path)!r}, "[idrm] run folder X")
            print("library chatter")
            warnings.warn("a library warning")
            console.progress("bt", 10, 10, ["loss 0.5"])
            console.result_table("the table")
        console.error("an error line")
        print("after the session")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    log = tmp_path / "logs" / "driver.log"
    assert proc.stdout.splitlines() == [
        "[idrm] run folder X", f"[idrm] logs: {log} (Ray, libraries, warnings; --verbose shows them here)",
        "  bt: step 10/10 (100%) | loss 0.5 | done in 0s", "the table", "after the session"]
    assert proc.stderr == "an error line\n"
    text = log.read_text()
    assert "library chatter" in text and "a library warning" in text and "the table" not in text


def test_live_lines_fit_the_terminal_width():
    """A wrapped line would take two rows and the redraw (one row up per line) would break."""
    view = ProgressView(live=True, width=40)
    first = view.progress("bt", 1, 10, ["loss 0.693147", "acc 0.50", "12.3 pairs/s"], now=0.0)
    assert first == "  bt [##------------------] step 1/10 |\n"
    final = view.progress("bt", 10, 10, ["loss 0.5"], now=9.0)
    assert final.endswith("| loss 0.5 | done in 9s\n")  # a final line stays whole (it is not redrawn)
