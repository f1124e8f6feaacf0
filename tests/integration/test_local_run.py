"""`run.local` / `idrm-ray train --local`: a run in this process (the stages called in-process,
`LocalSession`), with neither Ray nor Ray Train started.

That the same loop gives the same numbers under Ray Train (issue 15 §3) is checked where a Ray
Train run is spent anyway: test_zero_under_ray.py compares an in-process ID run (one worker,
plain torch) with a two-worker Ray Train ZeRO-3 run of the same seed step by step (loss, L_BT,
L_ID at rel 1e-4; eval loss and accuracy; final weights), and the two run folders' layouts.
Until this stop a one-worker Ray Train fit here made the same comparison (measured then: losses
bitwise equal for 3 steps, within 4e-6 up to step 8).
"""
from __future__ import annotations

import json

import pytest


def test_cli_local_flag_sets_run_local():
    from idrm_ray.cli import _parser, load_train_config

    args, _ = _parser().parse_known_args(["train", "--local", "optim.max_steps=3"])
    cfg = load_train_config(args)
    assert cfg.run.local and cfg.optim.max_steps == 3
    args, _ = _parser().parse_known_args(["train"])
    assert not load_train_config(args).run.local


def test_local_run_of_the_embedded_default_needs_no_ray(tmp_path, monkeypatch):
    """`idrm-ray train --local`, reduced: the NLI teacher fine-tune, BT and ID, all in this
    process; neither Ray nor Ray Train is started (both patched to fail here)."""
    import ray

    from idrm_ray.cli import main
    from idrm_ray.stream import cluster

    for target, name in ((cluster, "init_ray"), (cluster, "fit"), (ray, "init")):
        monkeypatch.setattr(target, name, lambda *a, _n=name, **k: pytest.fail(f"a local run called {_n}"))
    overrides = ["run.name=local_default", "data.max_pairs=32", "data.max_eval_pairs=16", "optim.max_steps=4",
                 "optim.global_batch_size=8", "optim.micro_batch_size=8", "teacher.finetune.max_examples=96",
                 "logging.wandb_mode=disabled"]
    assert main(["train", "--local", "--output-dir", str(tmp_path), *overrides]) == 0
    summary = json.loads((tmp_path / "local_default" / "summary.json").read_text())
    assert [r["method"] for r in summary["runs"]] == ["bt", "id"]
    assert all(r["steps"] == 4 and r["pairs_seen"] == 32 for r in summary["runs"]), summary["runs"]
    assert summary["teacher"]["eval_pairs"] == 300 and 0 <= summary["teacher"]["nli_accuracy"] <= 1  # bundled NLI eval
    assert (tmp_path / "local_default" / "teacher" / "config.json").is_file()
