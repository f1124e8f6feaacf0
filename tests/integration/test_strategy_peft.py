"""LoRA and top-block students under every strategy (issue 14 §1): plain torch in one
process is the reference; torch DDP, DeepSpeed ZeRO-2 and ZeRO-3 on 2 CPU processes (gloo,
no Ray) must agree with it, as the full fine-tune does in
test_strategy.py (same tolerances, same argument: losses and gradient norms to rtol 1e-4,
parameters to 5e-5 absolute and 1e-3 of the update). Frozen parameters stay bitwise at their
initial values everywhere, and resuming from `save_state` (adapters, optimizer, scheduler)
equals continuing, bitwise. Under ZeRO-3 the student is loaded as the worker loads it (built
partitioned, filled from safetensors) and the adapters are injected into the partitioned model.

One spawn of 2 ranks runs all scenarios of both settings, so DeepSpeed is imported and its comm
backend started once (without the CPU shm op, which the strategy skips: see test_strategy.py).
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from idrm_ray.core import tiny
from idrm_ray.core.peft_student import PeftSettings, apply_peft, merge_lora_state
from idrm_ray.core.reward_model import save_reward_model
from idrm_ray.train.strategy import make_strategy
from spawn_helpers import free_port, gloo_rank, join, spawn

SEQ, ROWS, ACCUM, STEPS = 16, 4, 2, 3
LR, MAX_GRAD_NORM = 1e-2, 1.0
ATOL_PARAMS, REL_PARAMS, RTOL_SCALARS = 5e-5, 1e-3, 1e-4
SETTINGS = {
    "lora": PeftSettings(lora_r=4, lora_alpha=8.0, lora_target_modules=("q_proj", "k_proj", "v_proj", "o_proj")),
    "top2": PeftSettings(train_top_blocks=2),
}
SCENARIOS = [("ddp", "torch", None), ("zero2", "deepspeed", 2), ("zero3", "deepspeed", 3)]
SPAWN_TIMEOUT_S = 300


def _data(vocab_size: int):
    g = torch.Generator().manual_seed(123)
    ids = torch.randint(3, vocab_size, (ACCUM, ROWS, SEQ), generator=g)  # (A, R, T)
    return ids, torch.randn(ACCUM, ROWS, generator=g)  # targets (A, R)


def _build(tok, peft: PeftSettings, seed: int, *, strategy=None, student_dir: str | None = None):
    """The tiny student built here, or (ZeRO-3) loaded partitioned from `student_dir` as the
    worker loads it (`strategy.load_reward_model`), then LoRA/top blocks applied."""
    if student_dir is None:
        model = tiny.build_tiny_student(tok, seed=seed)
    else:
        model = strategy.load_reward_model(student_dir, dtype=torch.float32, attn_implementation="sdpa", tokenizer=tok)
    torch.manual_seed(seed + 1)  # the adapters' init: the same whichever way the base came
    model = apply_peft(model, peft)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)
    return model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.1, 1.0 - s / 8))


def _strategy(kind: str, stage: int | None, world_size: int):
    return make_strategy(kind, zero_stage=stage or 0, precision="fp32", micro_batch_size=ROWS // world_size,
                         grad_accum_steps=ACCUM, max_grad_norm=MAX_GRAD_NORM, device=torch.device("cpu"))


def _train(strategy, model, data, n_steps: int):
    ids, targets = data
    per_rank = ROWS // strategy.world_size
    rows = slice(strategy.rank * per_rank, (strategy.rank + 1) * per_rank)
    losses, norms = [], []
    for _ in range(n_steps):
        step_loss = 0.0
        for micro in range(ACCUM):
            score = model(input_ids=ids[micro, rows]).logits.squeeze(-1)  # (R/W,)
            loss = torch.nn.functional.mse_loss(score, targets[micro, rows])
            strategy.backward(loss)
            strategy.step()
            step_loss += strategy.all_reduce_mean(loss.item()) / ACCUM
        losses.append(step_loss)
        norms.append(strategy.grad_norm())
    return losses, norms


def _run(kind: str, stage: int | None, tok, peft: PeftSettings, state_dir: Path, student_dir: str | None = None) -> dict:
    world_size = dist.get_world_size() if dist.is_initialized() else 1
    data = _data(len(tok))
    strategy = _strategy(kind, stage, world_size)
    model = strategy.prepare(*_build(tok, peft, seed=0, strategy=strategy, student_dir=student_dir))
    losses, norms = _train(strategy, model, data, STEPS)
    strategy.save_state(state_dir)
    more_losses, more_norms = _train(strategy, model, data, 1)
    continued = strategy.consolidated_state_dict()
    fresh = _strategy(kind, stage, world_size)
    fresh_model = fresh.prepare(*_build(tok, peft, seed=1, strategy=fresh, student_dir=student_dir))  # load replaces
    fresh.load_state(state_dir)
    resumed_losses, _ = _train(fresh, fresh_model, data, 1)
    return {"losses": losses + more_losses, "norms": norms + more_norms, "resumed_losses": resumed_losses,
            "continued": continued, "resumed": fresh.consolidated_state_dict()}


def _scenarios(rank: int, scenarios, tok, out_dir: str) -> None:
    for name, kind, stage in scenarios:
        for setting, peft in SETTINGS.items():
            start = time.perf_counter()
            student = str(Path(out_dir) / "student") if stage == 3 else None  # ZeRO-3: the worker's load path
            result = _run(kind, stage, tok, peft, Path(out_dir) / f"{setting}_{name}_state", student)
            result["wall_s"] = time.perf_counter() - start
            if rank == 0:
                torch.save(result, Path(out_dir) / f"{setting}_{name}.pt")


def _worker(rank: int, world_size: int, port: int, tok, out_dir: str) -> None:
    with gloo_rank(rank, world_size, port):
        _scenarios(rank, SCENARIOS, tok, out_dir)
        dist.barrier()


@pytest.fixture(scope="module")
def runs(student_tokenizer, tmp_path_factory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("strategy_peft")
    start, threads = time.perf_counter(), torch.get_num_threads()
    deadline = time.monotonic() + SPAWN_TIMEOUT_S
    save_reward_model(tiny.build_tiny_student(student_tokenizer, seed=0), student_tokenizer, out / "student")
    two = spawn(_worker, 2, (free_port(), student_tokenizer, str(out)))
    torch.set_num_threads(1)
    try:
        results = {}
        for setting, peft in SETTINGS.items():
            results[f"{setting}_reference"] = _run("torch", None, student_tokenizer, peft, out / f"{setting}_ref")
    finally:
        torch.set_num_threads(threads)
    join(two, deadline, SPAWN_TIMEOUT_S)
    for setting in SETTINGS:
        for name, _, _ in SCENARIOS:
            results[f"{setting}_{name}"] = torch.load(out / f"{setting}_{name}.pt", weights_only=True)
    print(f"\nLoRA/top-block strategies: {time.perf_counter() - start:.1f}s in all")
    return results


def _init(tok, setting: str) -> dict[str, torch.Tensor]:
    return _build(tok, SETTINGS[setting], seed=0)[0].state_dict()


def _max_diff(a, b) -> float:
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def _rel_diff(run, ref, init) -> float:
    num = sum((run[k].double() - ref[k].double()).square().sum() for k in ref)
    den = sum((ref[k].double() - init[k].double()).square().sum() for k in ref)
    return (num / den).sqrt().item()


NAMES = [s[0] for s in SCENARIOS]


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_reference_learns_and_frozen_stay_put(runs, setting, student_tokenizer):
    ref, init = runs[f"{setting}_reference"], _init(student_tokenizer, setting)
    assert ref["losses"][-1] < 0.7 * ref["losses"][0], ref["losses"]
    model = _build(student_tokenizer, SETTINGS[setting], seed=0)[0]
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    for key, value in ref["continued"].items():
        assert torch.equal(value, init[key]) == (key not in trained), key  # trained moved, frozen did not


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("name", NAMES)
def test_strategies_match_the_reference(runs, setting, name, student_tokenizer):
    ref, run, init = runs[f"{setting}_reference"], runs[f"{setting}_{name}"], _init(student_tokenizer, setting)
    torch.testing.assert_close(run["losses"], ref["losses"], rtol=RTOL_SCALARS, atol=0.0)
    torch.testing.assert_close(run["norms"], ref["norms"], rtol=RTOL_SCALARS, atol=0.0)
    assert list(run["continued"]) == list(ref["continued"])  # the same (LoRA-injected) keys, gathered
    diff, rel = _max_diff(run["continued"], ref["continued"]), _rel_diff(run["continued"], ref["continued"], init)
    print(f"{setting}/{name}: max |param - reference| = {diff:.2e}, relative to the update {rel:.2e}")
    assert diff <= ATOL_PARAMS and rel <= REL_PARAMS
    frozen = [k for k in init if torch.equal(ref["continued"][k], init[k])]
    assert frozen and all(torch.equal(run["continued"][k], init[k]) for k in frozen)


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("name", ["reference", *NAMES])
def test_resume_restores_adapters_and_optimizer(runs, setting, name):
    run = runs[f"{setting}_{name}"]
    assert run["resumed_losses"] == run["losses"][-1:]
    for key, value in run["continued"].items():
        assert torch.equal(run["resumed"][key], value), key


@pytest.mark.parametrize("name", NAMES)
def test_gathered_lora_state_merges_to_the_plain_model(runs, name, student_tokenizer):
    plain = tiny.build_tiny_student(student_tokenizer).state_dict()
    merged = merge_lora_state(runs[f"lora_{name}"]["continued"], SETTINGS["lora"])
    assert list(merged) == list(plain)
    assert all(merged[k].shape == plain[k].shape for k in plain)
