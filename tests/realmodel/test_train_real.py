"""The real path end to end (issue 13 §1-§2): the `small_real` preset, reduced, through the
real pipeline's stages and worker loop (encode stage, teacher stage, the train loop, its
checkpoint), with real pretrained models as a user has them. The runs are in-process
(`run.local`, issue 15 §5): what is checked here is the real models' path, not Ray Train, and
test_zero_under_ray.py checks that the same loop gives the same losses under Ray Train.

- student SmolLM2-135M-Instruct converted from its package as it comes: no pad token (pads
  with EOS, written into the saved checkpoint), byte-level BPE, its own chat template
  (`student.chat_template=true`), student window 512;
- teacher MiniLM-L6 (uncased WordPiece), fine-tuned on the bundled NLI set first, teacher
  window 256;
- BT and ID side by side on the same pairs (plain torch, one CPU worker), the top 4 of the 30
  blocks training (`student.train_top_blocks=4`, as the `study_real` preset; the distilled top
  block among them): the backward pass and the optimizer state shrink about sevenfold. One full
  fine-tuning step of the same model (every tensor moves) is test_capture_real.py's.

Then the ID checkpoint is read the ways a user reads it: `AutoModelForSequenceClassification`,
OpenRLHF's `get_llm_for_sequence_regression`, the reward server's scorer behind its HTTP app,
and `idrm-ray eval`; and one pair gets the same reward from the training encode path, from
eval and from the server (train-serve skew would silently degrade PPO).

Cost on 2 cores: two runs of 8 steps of SmolLM2 (~0.7 s a step) and the MiniLM fine-tune, ~40 s
in all with no Ray start-up (~4 min as three Ray Train fits; ~77 s with full fine-tuning at ~2 s a
step). The top blocks train at lr 3e-4 (the presets' 3e-5/1e-4 are for 20+ steps). Measured, mean
of the first and last 4 steps: BT's L_BT 0.686 -> 0.636, ID's L_BT 0.687 -> 0.652 and L_ID 0.849 ->
0.635 (full fine-tuning at 5e-5 gave 0.690 -> 0.679 for ID's L_BT).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from idrm_ray.data import bundled_path

STEPS, BATCH, MICRO = 8, 4, 2
TOP_BLOCKS, BLOCKS = 4, 30
FIT_TIMEOUT_S = 900
PAIRS = STEPS * BATCH


def _write_data(root: Path) -> tuple[Path, Path]:
    train_lines = bundled_path("pref_train").read_text(encoding="utf-8").splitlines()
    eval_lines = bundled_path("pref_eval").read_text(encoding="utf-8").splitlines()
    train, evals = root / "train.jsonl", root / "eval.jsonl"
    train.write_text("\n".join(train_lines[:PAIRS]) + "\n", encoding="utf-8")
    evals.write_text("\n".join(eval_lines[:8]) + "\n", encoding="utf-8")
    return train, evals


@pytest.fixture(scope="module")
def real_run(guard, tmp_path_factory):
    from idrm_ray.config import load_config
    from idrm_ray.config.train import TrainJobConfig
    from idrm_ray.run.driver import run_train

    root = tmp_path_factory.mktemp("real")
    train, evals = _write_data(root)
    overrides = [
        f"run.output_dir={root}", "run.name=real", f"data.train={train}", f"data.eval={evals}",
        f"optim.max_steps={STEPS}", f"optim.global_batch_size={BATCH}", f"optim.micro_batch_size={MICRO}",
        "optim.lr=3e-4", "optim.warmup_ratio=0.1", "run.log_every=1", "logging.wandb_mode=disabled",
        "teacher.finetune.max_examples=96", "teacher.finetune.eval_fraction=0.1", "run.local=true",
        f"student.train_top_blocks={TOP_BLOCKS}",
    ]
    cfg = load_config(TrainJobConfig, None, overrides, preset="small_real")
    assert cfg.student.chat_template and cfg.student.max_len == 512 and cfg.teacher.max_len == 256
    summary = guard(lambda: run_train(cfg), timeout_s=FIT_TIMEOUT_S, what="run_train small_real")
    run_dir = Path(summary["run_dir"])
    runs = {r["method"]: r for r in summary["runs"]}
    history = {m: [json.loads(x) for x in (run_dir / m / "metrics.jsonl").read_text().splitlines()] for m in runs}
    return {"cfg": cfg, "summary": summary, "run_dir": run_dir, "runs": runs, "history": history,
            "evals": evals, "student_dir": cfg.student.name_or_path}


def _series(history: list[dict], key: str) -> list[float]:
    return [row[key] for row in history if row.get("pairs") and key in row]


def _fell(values: list[float], k: int = 4) -> tuple[float, float]:
    """Mean of the first k logged steps and of the last k (single steps are noisy)."""
    return float(np.mean(values[:k])), float(np.mean(values[-k:]))


@pytest.mark.parametrize("method", ["bt", "id"])
def test_real_student_trains(real_run, method):
    run, history = real_run["runs"][method], real_run["history"][method]
    assert run["steps"] == STEPS and run["pairs_seen"] == PAIRS
    first, last = _fell(_series(history, "l_bt"))
    assert last < first, f"{method}: L_BT did not fall ({first:.4f} -> {last:.4f})"
    init = load_file(Path(real_run["student_dir"]) / "model.safetensors")
    final = load_file(Path(run["checkpoint"]) / "model.safetensors")
    common = [k for k in init if k in final]  # the backbone (model.*): the LM's head became `score`
    assert len(common) > 200, sorted(final)[:5]
    top = tuple(f"model.layers.{i}." for i in range(BLOCKS - TOP_BLOCKS, BLOCKS)) + ("model.norm.",)
    trained = [k for k in common if k.startswith(top)]
    assert len(trained) == 9 * TOP_BLOCKS + 1, trained  # 7 projections and 2 norms per block
    moved = [k for k in trained if not torch.equal(init[k], final[k])]
    frozen_moved = [k for k in common if k not in trained and not torch.equal(init[k], final[k])]
    assert moved == trained and not frozen_moved, (sorted(set(trained) - set(moved)), frozen_moved[:5])


def test_id_distils_real_teacher_maps(real_run):
    history = real_run["history"]["id"]
    l_id = _series(history, "l_id")
    assert len(l_id) == STEPS and all(np.isfinite(l_id)) and min(l_id) > 0
    first, last = _fell(l_id)
    assert last < first, f"L_ID did not fall ({first:.4f} -> {last:.4f})"
    # Maps travel on the teacher's window: never more bytes than the token-level fp32 map.
    assert all(r["teacher_map_bytes"] < r["token_fp32_map_bytes"] for r in history if r.get("pairs"))


def test_checkpoint_is_a_real_reward_model(real_run):
    """pad = EOS written into the checkpoint; the render choice recorded for every reader."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    ckpt = real_run["runs"]["id"]["checkpoint"]
    tok = AutoTokenizer.from_pretrained(ckpt)
    assert tok.pad_token is not None and tok.pad_token_id == tok.eos_token_id
    model = AutoModelForSequenceClassification.from_pretrained(ckpt)
    assert model.config.pad_token_id == tok.eos_token_id and model.config.value_head_prefix == "score"
    meta = json.loads((Path(ckpt) / "idrm_meta.json").read_text())
    assert meta["render"] == {"chat_template": True, "template": ["", "", ""], "max_len": 512}


def _training_rewards(ckpt: str, run, examples) -> np.ndarray:
    """Rewards of `examples` through the training encode path (the Ray Data encode stage and
    the worker's collate), read by the checkpoint: [chosen_0, rejected_0, ...]."""
    from idrm_ray.core.reward_model import compute_rewards, load_reward_model
    from idrm_ray.run.driver import encode_kwargs_for, encode_eval
    from idrm_ray.train.ingest import stack_rows, to_student_batch

    cfg = run["cfg"]
    kwargs = {**encode_kwargs_for(cfg, ckpt, None)}
    rows = encode_eval(examples, kwargs)
    batch = to_student_batch(stack_rows(rows), pad_id=0, device=torch.device("cpu"))
    model = load_reward_model(ckpt, dtype=torch.float32).eval()
    with torch.no_grad():
        rewards = compute_rewards(model, batch.input_ids, batch.attention_mask).double().numpy()
    n = batch.num_pairs
    return np.stack([rewards[:n], rewards[n:]], axis=1).reshape(-1)


def test_one_pair_scores_the_same_in_training_eval_and_the_server(real_run, ray_session, tmp_path):
    from fastapi.testclient import TestClient

    from idrm_ray.cli import main
    from idrm_ray.core.chat import chat_render
    from idrm_ray.core.reward_model import cached_tokenizer
    from idrm_ray.data import load_preferences
    from idrm_ray.serve.app import RewardService, build_app, local_score_fn
    from idrm_ray.serve.protocol import Limits
    from idrm_ray.serve.scoring import RewardScorer

    ckpt = real_run["runs"]["id"]["checkpoint"]
    examples, _ = load_preferences(str(real_run["evals"]))
    examples = examples[:3]
    trained = _training_rewards(ckpt, real_run, examples)

    one = tmp_path / "three.jsonl"
    one.write_text("".join(json.dumps({"prompt": e.prompt, "chosen": e.chosen, "rejected": e.rejected}) + "\n"
                           for e in examples))
    out = tmp_path / "eval"
    assert main(["eval", "--checkpoint", ckpt, "--data", str(one), "--output-dir", str(out)]) == 0
    scored = [json.loads(x) for x in next(out.glob("*/scores.jsonl")).read_text().splitlines()]
    evaluated = np.array([v for row in scored for v in (row["r_chosen"], row["r_rejected"])])
    np.testing.assert_allclose(evaluated, trained, rtol=1e-4, atol=1e-4)

    # The server gets what OpenRLHF sends with --data.apply_chat_template: the rendered prompt
    # and the response, as one query string, plus the prompt.
    tok = cached_tokenizer(ckpt)
    scorer = RewardScorer.from_checkpoint(ckpt)
    queries, prompts = [], []
    for e in examples:
        for response in (e.chosen, e.rejected):
            r = chat_render(tok, e.prompt, response)
            queries.append(r.text(e.prompt, response))
            prompts.append(r.text(e.prompt, "")[: len(r.prefix) + len(e.prompt) + len(r.separator)])
    client = TestClient(build_app(RewardService(local_score_fn(scorer), limits=Limits(), token_digest=None)))
    answer = client.post("/get_reward", json={"query": queries, "prompts": prompts})
    assert answer.status_code == 200, answer.text
    np.testing.assert_allclose(np.array(answer.json()["rewards"]), trained, rtol=1e-4, atol=1e-4)


def test_openrlhf_loads_the_real_checkpoint(real_run, openrlhf_loader):
    from idrm_ray.core.reward_model import load_reward_model

    ckpt = real_run["runs"]["id"]["checkpoint"]
    theirs = openrlhf_loader(ckpt, "reward", param_dtype="bf16", attn_implementation="sdpa").eval()
    ours = load_reward_model(ckpt, dtype=torch.bfloat16)
    theirs_sd, ours_sd = theirs.state_dict(), ours.state_dict()
    assert set(theirs_sd) == set(ours_sd)
    assert all(torch.equal(theirs_sd[k], ours_sd[k]) for k in ours_sd)  # nothing re-initialised
