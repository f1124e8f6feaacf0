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

PACKAGES = ("idrm_ray.core", "idrm_ray.configtree", "idrm_ray.config", "idrm_ray.data", "idrm_ray.methods")

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

# The objective's import, then a reward-model save and a teacher save (`core.hf_save`: transformers'
# save_pretrained would import deepspeed through accelerate's unwrap, 1.3 s in every process that saves).
CLEAN = textwrap.dedent(
    """
    import json, sys, tempfile
    import idrm_ray.core.objective
    from idrm_ray.core import tiny
    from idrm_ray.core.hf_save import save_pretrained
    from idrm_ray.core.reward_model import save_reward_model
    tok = tiny.train_student_tokenizer()
    with tempfile.TemporaryDirectory() as out:
        save_reward_model(tiny.build_tiny_student(tok, num_layers=1), tok, out + "/student")
        teacher_tok = tiny.train_teacher_tokenizer(kind="wordpiece")
        save_pretrained(tiny.build_tiny_teacher(teacher_tok, num_layers=1), out + "/teacher")
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


def test_core_config_data_methods_import_without_ray_or_deepspeed(interpreters):
    result = interpreters["blocked"]
    # The walk found the modules (not just the package __init__s).
    for name in ("idrm_ray.core.objective", "idrm_ray.core.simulated", "idrm_ray.config.train", "idrm_ray.data.loaders",
                 "idrm_ray.methods.registry"):
        assert name in result["names"]
    assert not result["failed"], "\n".join(f"{k}:\n{v}" for k, v in result["failed"].items())


def test_objective_and_checkpoint_saves_do_not_pull_ray_or_deepspeed(interpreters):
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


# ---------------------------------------------------------------- the import graph (issue 15 §4)
#
# Every module's imports, read with `ast` (function-local ones too, so a lazy import cannot
# hide a circle). Top-level packages form layers; a module may import its own package or a
# lower layer, never a higher one or a peer. The order, read from what each package holds:
# `console` (terminal output) < `packaged` (model folders shipped in wheels; it says on the console when
# it converts one) < `core` (math, models, scoring) < `data` (readers, the stream schema), `configtree`
# (the machinery of config trees) < `train` (one training worker: the loop, its session and strategy),
# `methods` (method families: their config sections, worker settings and procedures, handed the Ray tools
# by `multirun`) < `config` (the job trees; `method` built from the families' sections) < `stream` (the Ray
# Data graph, Ray at the edge), `eval`, `serve` (use a trained checkpoint; peers, so eval neither starts Ray
# nor imports the run) < `teacher` (the NLI fine-tune), `multirun` (the multi-run procedures' Ray tools) <
# `run` (one training run's driver) < `compare`, `tune`, `bench` (run it many times; compare and tune
# through `idrm_ray.run` alone), `ppo` (launches OpenRLHF against `serve`) < `cli`.

import ast  # noqa: E402
import functools  # noqa: E402
from pathlib import Path  # noqa: E402

LAYERS = {
    "console": 0, "local_ray": 0, "packaged": 1, "core": 2, "data": 3, "configtree": 3, "train": 4, "methods": 4, "config": 5,
    "stream": 6, "eval": 6, "serve": 6, "teacher": 7, "multirun": 7, "run": 8,
    "compare": 9, "tune": 9, "bench": 9, "ppo": 9, "cli": 10,
}
# Known circles: none left. A pair added here must be one that is being removed; a circle
# that is gone must leave this list, so the list only shrinks.
KNOWN_CIRCLES: list[set[str]] = []
# Upward imports waiting for a move: none left; an entry that disappears must leave the set.
KNOWN_UPWARD: set[str] = set()
PACKAGE_ROOT = Path(__file__).resolve().parents[2] / "idrm_ray"


def _module_files() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _targets(node: ast.Import | ast.ImportFrom, module: str, modules: dict[str, Path]) -> list[str]:
    """Our modules an import statement loads (`from pkg import name` is pkg.name when that
    is a module, else pkg); relative imports resolved against `module`."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            pkg = module.split(".")
            if modules[module].name != "__init__.py":
                pkg = pkg[:-1]
            base = ".".join(pkg[: len(pkg) - node.level + 1] + ([base] if base else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    out = []
    for name in names:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name.startswith("idrm_ray") and name != module:
            out.append(name)
    return out


@functools.cache
def _import_graph() -> tuple[dict[str, set[str]], set[tuple[str, str]]]:
    """(module -> modules it imports, the (module, target) pairs imported inside a function)."""
    modules = _module_files()
    edges: dict[str, set[str]] = {m: set() for m in modules}
    local: set[tuple[str, str]] = set()
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges[module].update(_targets(node, module, modules))
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and ":" in node.value:
                # "idrm_ray.pkg.mod:Name", imported by name at run time (importlib): an import too
                name = node.value.partition(":")[0]
                if name in modules and name.startswith("idrm_ray.") and name != module:
                    edges[module].add(name)
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if isinstance(node, (ast.Import, ast.ImportFrom)):
                        local.update((module, t) for t in _targets(node, module, modules))
    return edges, local


def _circles(edges: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = set()
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.add(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(comp)
    return out


def _reaches(edges: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        if m == goal:
            return True
        if m not in seen:
            seen.add(m)
            todo += edges[m]
    return False


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "<root>"


def test_graph_reader_sees_local_and_relative_imports(tmp_path):
    """The reader itself: a function-local import counts, a `from pkg import module` names the module."""
    edges, local = _import_graph()
    assert "idrm_ray.train.worker" in edges["idrm_ray.run.driver"]  # imported inside _loop()
    assert ("idrm_ray.run.driver", "idrm_ray.train.worker") in local
    assert "idrm_ray.stream.cluster" in edges["idrm_ray.run.driver"]  # from idrm_ray.stream import cluster
    assert "idrm_ray.config.serve" in edges["idrm_ray.config"]  # the job registry names its trees
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def test_no_import_circles_beyond_the_known_ones():
    edges, _ = _import_graph()
    circles = _circles(edges)
    new = [sorted(c) for c in circles if c not in KNOWN_CIRCLES]
    assert not new, f"import circles: {new}; move the shared part to a lower module"
    gone = [sorted(c) for c in KNOWN_CIRCLES if c not in circles]
    assert not gone, f"circles {gone} are gone: remove them from KNOWN_CIRCLES"


def test_no_function_local_import_hides_a_circle():
    """A lazy import is fine for a heavy library or an optional path, not to break a circle."""
    edges, local = _import_graph()
    known = {frozenset(c) for c in KNOWN_CIRCLES}
    hiding = sorted((m, t) for m, t in local if _reaches(edges, t, m) and frozenset((m, t)) not in known)
    assert not hiding, f"function-local imports closing a circle: {hiding}"


def test_no_upward_imports_between_top_level_packages():
    edges, _ = _import_graph()
    unknown = sorted({_layer(m) for m in edges} - set(LAYERS) - {"<root>"})
    assert not unknown, f"top-level packages {unknown} have no layer in LAYERS: add them"
    upward = sorted(
        f"{m} -> {t}"
        for m, targets in edges.items()
        for t in targets
        if _layer(m) != _layer(t) and "<root>" not in (_layer(m), _layer(t)) and LAYERS[_layer(m)] <= LAYERS[_layer(t)]
    )
    new = [u for u in upward if u not in KNOWN_UPWARD]
    assert not new, "imports against the layer order (a module may import only lower layers):\n" + "\n".join(new)
    gone = sorted(KNOWN_UPWARD - set(upward))
    assert not gone, f"{gone} no longer import upward: remove them from KNOWN_UPWARD"


# The rooms a run is made of; `compare` and `tune` see them through one door.
RUN_ROOMS = ("train", "stream", "teacher", "multirun", "run")


def test_compare_and_tune_import_the_run_through_its_package_alone():
    """They run training many times; what they use of it is `idrm_ray/run/__init__.py`'s
    names, so the rooms beneath can change without touching them."""
    edges, _ = _import_graph()
    through = sorted(
        f"{m} -> {t}"
        for m, targets in edges.items()
        if _layer(m) in ("compare", "tune")
        for t in targets
        if _layer(t) in RUN_ROOMS and t != "idrm_ray.run"
    )
    assert not through, "import these through `idrm_ray.run` (add the name to its __init__):\n" + "\n".join(through)


def test_the_command_line_and_configs_load_no_torch():
    """`idrm-ray --help`, reading a config and a run's data stay light (0.3 s instead of 5.5 s
    here; a bad data file's error took 8 s): the objective's knobs live in `core/settings.py`,
    torch is imported where it is used, and `idrm_ray.run` loads its public names on first use."""
    import subprocess
    import sys

    code = ("import sys, idrm_ray.cli, idrm_ray.config, idrm_ray.config.train, idrm_ray.methods.registry, "
            "idrm_ray.data, idrm_ray.run.inputs; print(sorted(m for m in ('torch', 'transformers', 'ray', 'deepspeed') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def test_optimizer_step_benchmark_quick_smoke(capsys):
    from idrm_ray.bench import optimizer_step

    res = optimizer_step.main(["--quick"])
    assert set(res) == {"default", "foreach", "fused"} and all(v > 0 for v in res.values())
    assert "fused" in capsys.readouterr().out
