"""A LoRA + top-block ID run through the production worker loop (issue 14 §1), in this process
(`run.local`: no Ray Train fit), and what it saves.

ID with N = 2 on the tiny student (4 blocks) with `student.train_top_blocks=2` and LoRA r=4 on
q/k/v/o (so adapters in blocks 2 and 3 only), the seeded random tiny teacher, 6 steps. The
checkpoint's `model/` is an ordinary merged reward model: plain transformers and OpenRLHF's
`get_llm_for_sequence_regression` read it (value head kept) and score the same; `model/adapter/`
loads with peft over the initial student and scores the same again; the embeddings and the
blocks below stay bitwise the initial student's; `idrm_meta.json` records the settings.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS = 6
OVERRIDES = ("method.name=id", "method.compare_bt=false", "method.id.top_n=2", "teacher.name_or_path=tiny",
             "student.train_top_blocks=2", "student.lora.r=4", "student.lora.alpha=8",
             "student.lora.target_modules=[q_proj, k_proj, v_proj, o_proj]", "data.max_pairs=48",
             "data.max_eval_pairs=16", f"optim.max_steps={STEPS}", "optim.global_batch_size=8",
             "optim.micro_batch_size=4", "optim.lr=3e-3", "run.log_every=1", "resources.num_workers=1",
             "logging.wandb_mode=disabled", "run.local=true")
TEXTS = ["Human: What does the cat like?\n\nAssistant: The cat likes the ball.", "A dog sees.",
         "Human: hello?\n\nAssistant: yes, with care today."]


@pytest.fixture(scope="module")
def run(guard, make_config, tmp_path_factory):
    from idrm_ray.run import driver

    root = tmp_path_factory.mktemp("peft_run")
    summary = guard(lambda: driver.run_train(make_config(root, "peft", *OVERRIDES)), timeout_s=300,
                    what="run_train --local (LoRA + top blocks, ID)")
    run_dir = Path(summary["run_dir"])
    return {"run_dir": run_dir, "ckpt": run_dir / "id" / "checkpoint", "student": run_dir / "assets" / "student",
            "history": [json.loads(x) for x in (run_dir / "id" / "metrics.jsonl").read_text().splitlines()]}


def _rewards(model, tok) -> torch.Tensor:
    from idrm_ray.core.reward_model import compute_rewards

    enc = tok(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        return compute_rewards(model.eval(), enc["input_ids"], enc["attention_mask"])


def test_run_learns_through_the_adapters(run):
    rows = [r for r in run["history"] if r.get("pairs")]
    assert len(rows) == STEPS and all(r["l_id"] == r["l_id"] for r in rows)
    first, last = rows[0], rows[-1]
    assert last["loss"] < first["loss"], [r["loss"] for r in rows]


def test_checkpoint_is_a_merged_reward_model(run):
    from idrm_ray.core.reward_model import read_metadata

    merged, initial = load_file(run["ckpt"] / "model.safetensors"), load_file(run["student"] / "model.safetensors")
    assert set(merged) == set(initial)  # an ordinary model: no lora_* or base_layer keys, the score head kept
    moved = {k for k in merged if not torch.equal(merged[k], initial[k])}
    assert "score.weight" in moved and "model.layers.3.self_attn.q_proj.weight" in moved
    assert all(k.startswith(("model.layers.2.", "model.layers.3.", "score.")) for k in moved), sorted(moved)
    assert not any(".mlp." in k for k in moved)  # not a LoRA target: frozen
    meta = read_metadata(run["ckpt"])["peft"]
    assert meta == {"train_top_blocks": 2, "lora_r": 4, "lora_alpha": 8.0, "lora_dropout": 0.0,
                    "lora_target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}


def test_transformers_openrlhf_and_peft_read_it_alike(run, openrlhf_loader):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from idrm_ray.core.reward_model import cached_tokenizer

    tok = cached_tokenizer(str(run["ckpt"]))
    hf = AutoModelForSequenceClassification.from_pretrained(run["ckpt"])
    want = _rewards(hf, tok)
    initial = AutoModelForSequenceClassification.from_pretrained(run["student"], num_labels=1)
    assert (_rewards(initial, tok) - want).abs().max() > 1e-4  # training changed the rewards
    adapted = PeftModel.from_pretrained(initial, run["ckpt"] / "adapter").merge_and_unload()
    torch.testing.assert_close(_rewards(adapted, tok), want, atol=1e-5, rtol=1e-5)
    theirs = openrlhf_loader(str(run["ckpt"]), "reward", param_dtype="bf16", attn_implementation="sdpa").float()
    enc = tok(TEXTS, return_tensors="pt", padding=True)
    ours = AutoModelForSequenceClassification.from_pretrained(run["ckpt"], dtype=torch.bfloat16).float()
    with torch.no_grad():  # OpenRLHF loads bf16 only: both sides from the same bf16-rounded weights
        torch.testing.assert_close(theirs(enc["input_ids"], enc["attention_mask"]), _rewards(ours, tok),
                                   atol=1e-4, rtol=1e-4)
