"""The math stays importable without Ray or DeepSpeed (STYLE.md 1, 3, 4), and the ID-step
benchmark's smoke path runs end to end (STYLE.md 9).

The import checks run in fresh interpreters (this one has imported half the world); both
start together, so the tier pays for one interpreter start-up, not two.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

PACKAGES = ("idrm_ray.core", "idrm_ray.config", "idrm_ray.data")

# `sys.modules[name] = None` makes any `import name` raise ImportError, before anything else runs.
BLOCKED = textwrap.dedent(
    f"""
    import sys
    sys.modules["ray"] = None
    sys.modules["deepspeed"] = None
    import importlib, json, pkgutil, traceback
    names, failed = [], {{}}
    for pkg_name in {PACKAGES!r}:
        pkg = importlib.import_module(pkg_name)
        names.append(pkg_name)
        names += [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg_name + ".")]
    for name in names:
        try:
            importlib.import_module(name)
        except BaseException:
            failed[name] = traceback.format_exc(limit=3)
    print(json.dumps({{"names": names, "failed": failed}}))
    """
)

CLEAN = textwrap.dedent(
    """
    import json, sys
    import idrm_ray.core.objective
    print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("ray", "deepspeed"))))
    """
)


@pytest.fixture(scope="module")
def interpreters() -> dict[str, object]:
    """Both scripts' parsed stdout, run concurrently in fresh interpreters."""
    procs = {
        key: subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for key, code in (("blocked", BLOCKED), ("clean", CLEAN))
    }
    out = {}
    for key, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{key} interpreter failed:\n{stderr[-3000:]}"
        out[key] = json.loads(stdout.strip().splitlines()[-1])
    return out


def test_core_config_data_import_without_ray_or_deepspeed(interpreters):
    result = interpreters["blocked"]
    # The walk found the modules (not just the package __init__s).
    for name in ("idrm_ray.core.objective", "idrm_ray.core.simulated", "idrm_ray.config.train", "idrm_ray.data.loaders"):
        assert name in result["names"]
    assert not result["failed"], "\n".join(f"{k}:\n{v}" for k, v in result["failed"].items())


def test_objective_does_not_pull_ray_or_deepspeed(interpreters):
    assert interpreters["clean"] == []


# ---------------------------------------------------------------- benchmark smoke

TINY = ["--hidden", "32", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--reps", "1"]


def test_id_step_benchmark_quick_smoke(tmp_path, capsys):
    from idrm_ray.bench import id_step

    out = tmp_path / "bench.json"
    res = id_step.main(["--quick", "--lengths", "24", *TINY, "--no-rss", "--json", str(out)])
    printed = capsys.readouterr().out
    for heading in ("Step time (s)", "Peak memory of a step", "Simulated maps alone", "Where the ID N=1 time goes"):
        assert heading in printed
    assert "ID N=1/BT" in printed and "naive/default" in printed
    saved = json.loads(out.read_text())
    row = saved["lengths"]["24"]
    assert row["workload"]["tokens_per_seq"] == 24
    assert set(row["time_s"]) == set(id_step.NAMES) and all(t > 0 for t in row["time_s"].values())
    assert all(b > 0 for b in row["peak_bytes"].values())
    sim = row["simulated_maps_bytes"]
    assert sim["naive"] > 0 and sim["chunked"] > 0
    assert sim["max_abs_diff"] < 1e-5  # the naive dense maps and the chunked ones agree
    assert res["lengths"][24]["split_s"]["maps fwd"] > 0


def test_rss_child_runs_in_process(tmp_path, student_tokenizer, teacher_tokenizer):
    """The fresh-process measurement's body (normally `python -m idrm_ray.bench.measure`)."""
    from idrm_ray.bench.measure import rss_child, save_payload
    from idrm_ray.bench.workload import StudentShape, Tokenizers, build_student, build_workload

    tokenizers = Tokenizers(student=student_tokenizer, teacher=teacher_tokenizer)
    model = build_student(tokenizers, StudentShape(hidden=32, layers=2, heads=4, kv_heads=2))
    warm = build_workload(tokenizers, 16)
    save_payload(tmp_path, model, warm, [build_workload(tokenizers, n) for n in (32, 24)])
    got = rss_child(tmp_path, "ID N=2")
    assert list(got) == [24, 32]  # shortest first
    for row in got.values():
        assert row["rss_step"] >= 0 and row["baseline_rss"] > 0 and isinstance(row["exact"], bool)
