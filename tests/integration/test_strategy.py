"""Strategies agree with a 1-process torch run: torch DDP, DeepSpeed ZeRO-2 and ZeRO-3 on 2
CPU processes (torch.multiprocessing + gloo on 127.0.0.1, no Ray), each rank taking half of
the same global batch.

Tolerance (fp32), measured against the 1-process torch run after 6 optimizer steps:
- losses and pre-clip gradient norms: rtol 1e-4. AdamW is nearly blind to a uniform gradient
  scale, so these catch a sum-instead-of-mean or a missing 1/accum factor.
- parameters, globally: |run - ref| / |ref - init| <= 1e-3 (L2 over all tensors). A real error
  (a rank's half missing, a wrong accumulation boundary, a skipped scheduler step) changes
  the update direction, a ratio of order 1.
- parameters, per element: max |run - ref| <= 5e-5 = 5% of one lr step. The runs differ only
  in float summation order (2-row means averaged by gloo vs one 4-row mean; ZeRO's flat
  buckets; thread counts), ~1e-7 relative. Most elements agree to ~1e-6, but an element whose
  true gradient is ~0 gets AdamW update lr*g/(|g|+eps): noise of ~1e-10 in g against
  eps=1e-8 moves it by up to ~1e-2*lr = 1e-5 per step. Observed: DDP 3.5e-6, ZeRO-2 2.6e-6,
  ZeRO-3 1.3e-5 (single elements of MLP up_proj; at most 2 elements above 1e-6 per run).
Resuming from save_state is compared exactly (bitwise).

DeepSpeed's CPU shm comm op, a 25-45 s JIT compile, is not built: our strategy skips it
(`strategy_deepspeed.without_cpu_inference_comm_op`, only DeepSpeed-Inference calls it), and the
ranks check that it is absent.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from transformers import AutoModelForSequenceClassification

from idrm_ray.core import tiny
from idrm_ray.train.strategy import make_strategy
from idrm_ray.train.strategy_deepspeed import build_ds_config
from spawn_helpers import free_port, gloo_rank, join, spawn

SEQ, ROWS, ACCUM, STEPS = 16, 4, 2, 5  # ROWS: global rows per micro-batch; ACCUM micro-batches per step
LR, MAX_GRAD_NORM = 1e-3, 1.0
ATOL_PARAMS, REL_PARAMS, RTOL_SCALARS = 5e-5, 1e-3, 1e-4
SPAWN_TIMEOUT_S = 300  # generous for a cold JIT compile on a slow runner; a hang fails, not waits
SCENARIOS = [("ddp", "torch", None), ("zero2", "deepspeed", 2), ("zero3", "deepspeed", 3)]


# ----------------------------------------------------------------------------- training


def _data(vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One fixed global batch: ACCUM micro-batches of ROWS rows, specials (ids 0-2) avoided so
    HF's last-non-pad pooling reads the last position."""
    g = torch.Generator().manual_seed(123)
    ids = torch.randint(3, vocab_size, (ACCUM, ROWS, SEQ), generator=g)  # (A, R, T)
    targets = torch.randn(ACCUM, ROWS, generator=g)  # (A, R)
    return ids, targets


def _lr_lambda(step: int) -> float:
    return max(0.1, 1.0 - step / 8)  # decays, so a lost scheduler state shows in the resume check


def _build(tok, seed: int):
    model = tiny.build_tiny_student(tok, seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    return model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda)


def _strategy(kind: str, zero_stage: int | None, world_size: int):
    return make_strategy(
        kind,
        zero_stage=zero_stage or 0,
        precision="fp32",
        micro_batch_size=ROWS // world_size,
        grad_accum_steps=ACCUM,
        max_grad_norm=MAX_GRAD_NORM,
        device=torch.device("cpu"),
    )


def _train_steps(strategy, model, data, n_steps: int) -> tuple[list[float], list[float]]:
    """n_steps optimizer steps over the fixed batch; this rank reads its half of each row block."""
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
            assert strategy.is_accumulation_boundary() == (micro == ACCUM - 1)
            strategy.step()
            step_loss += strategy.all_reduce_mean(loss.item()) / ACCUM
        losses.append(step_loss)
        norms.append(strategy.grad_norm())
    return losses, norms


def _run(kind: str, zero_stage: int | None, tok, state_dir: Path) -> dict:
    """Train STEPS steps, save, one more step; then a fresh model/optimizer/strategy loads the
    saved state and takes that step again."""
    world_size = dist.get_world_size() if dist.is_initialized() else 1
    data = _data(len(tok))
    strategy = _strategy(kind, zero_stage, world_size)
    model = strategy.prepare(*_build(tok, seed=0))
    losses, norms = _train_steps(strategy, model, data, STEPS)
    strategy.save_state(state_dir, client_state={"step": STEPS})
    more_losses, more_norms = _train_steps(strategy, model, data, 1)
    continued = strategy.consolidated_state_dict()

    fresh = _strategy(kind, zero_stage, world_size)
    fresh_model = fresh.prepare(*_build(tok, seed=1))  # other weights: load must replace them
    client = fresh.load_state(state_dir)
    resumed_losses, resumed_norms = _train_steps(fresh, fresh_model, data, 1)
    resumed = fresh.consolidated_state_dict()
    return {
        "losses": losses + more_losses,
        "norms": norms + more_norms,
        "resumed_losses": resumed_losses,
        "resumed_norms": resumed_norms,
        "continued": continued,
        "resumed": resumed,
        "client": client,
        "unwrapped": type(strategy.unwrap()).__name__,
        "mean_of_ranks": strategy.all_reduce_mean(float(strategy.rank)),
        "mean_of_ranks_tensor": strategy.all_reduce_mean(torch.tensor([strategy.rank, 1.0])),
    }


def _worker(rank: int, world_size: int, port: int, tok, out_dir: str) -> None:
    """A spawned rank: gloo as Ray Train would set it up (`spawn_helpers.gloo_rank`), then each scenario."""
    with gloo_rank(rank, world_size, port):
        for name, kind, stage in SCENARIOS:
            start = time.perf_counter()
            result = _run(kind, stage, tok, Path(out_dir) / f"{name}_state")
            result["wall_s"] = time.perf_counter() - start
            if rank == 0:
                torch.save(result, Path(out_dir) / f"{name}.pt")
        if rank == 0:
            import deepspeed.comm.comm as ds_comm

            torch.save({"shm_op_built": getattr(ds_comm.cdb, "shm_comm_op", None) is not None}, Path(out_dir) / "comm.pt")
        dist.barrier()


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def runs(student_tokenizer, tmp_path_factory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("strategy")
    start, threads = time.perf_counter(), torch.get_num_threads()
    torch.set_num_threads(1)  # as in the ranks; also avoids OpenMP spinning on a busy 2-core box
    try:
        reference = _run("torch", None, student_tokenizer, out / "reference_state")
    finally:
        torch.set_num_threads(threads)
    reference["wall_s"] = time.perf_counter() - start
    start = time.perf_counter()
    join(spawn(_worker, 2, (free_port(), student_tokenizer, str(out))), time.monotonic() + SPAWN_TIMEOUT_S,
         SPAWN_TIMEOUT_S)
    spawn_s = time.perf_counter() - start
    results = {"reference": reference, "comm": torch.load(out / "comm.pt", weights_only=True)}
    for name, _, _ in SCENARIOS:
        results[name] = torch.load(out / f"{name}.pt", weights_only=True)
    print(f"\nreference {reference['wall_s']:.1f}s, 2-rank spawn {spawn_s:.1f}s, "
          + ", ".join(f"{n} {results[n]['wall_s']:.1f}s" for n, _, _ in SCENARIOS))
    return results


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def _rel_diff(run: dict, ref: dict, init: dict) -> float:
    """|run - ref| / |ref - init|, L2 over all parameters together."""
    num = sum((run[k].double() - ref[k].double()).square().sum() for k in ref)
    den = sum((ref[k].double() - init[k].double()).square().sum() for k in ref)
    return (num / den).sqrt().item()


# ----------------------------------------------------------------------------- tests


def test_reference_learns_and_clips(runs):
    ref = runs["reference"]
    assert ref["losses"][-1] < 0.5 * ref["losses"][0], ref["losses"]
    # The clip threshold is active at least once, so clipping is part of what is compared.
    assert max(ref["norms"]) > MAX_GRAD_NORM, ref["norms"]


@pytest.mark.parametrize("name", [s[0] for s in SCENARIOS])
def test_two_ranks_match_single_process(runs, name, student_tokenizer):
    ref, run = runs["reference"], runs[name]
    assert run["losses"][-1] < 0.5 * run["losses"][0], run["losses"]
    torch.testing.assert_close(run["losses"], ref["losses"], rtol=RTOL_SCALARS, atol=0.0)
    torch.testing.assert_close(run["norms"], ref["norms"], rtol=RTOL_SCALARS, atol=0.0)
    init = tiny.build_tiny_student(student_tokenizer, seed=0).state_dict()
    diff, rel = _max_diff(run["continued"], ref["continued"]), _rel_diff(run["continued"], ref["continued"], init)
    print(f"{name}: max |param - reference| = {diff:.2e}, relative to the update {rel:.2e}")
    assert diff <= ATOL_PARAMS
    assert rel <= REL_PARAMS
    # Training moved parameters by far more than the tolerance (the check is not vacuous).
    assert _max_diff(ref["continued"], init) > 20 * ATOL_PARAMS

@pytest.mark.parametrize("name", ["reference"] + [s[0] for s in SCENARIOS])
def test_consolidated_state_dict_is_the_hf_state_dict(runs, name, student_tokenizer, tmp_path):
    expected = tiny.build_tiny_student(student_tokenizer).state_dict()
    got = runs[name]["continued"]
    assert list(got) == list(expected)
    assert all(got[k].shape == expected[k].shape and got[k].dtype == torch.float32 for k in got)
    assert runs[name]["unwrapped"] == type(tiny.build_tiny_student(student_tokenizer)).__name__
    # It saves and reloads as a Hugging Face directory.
    model = tiny.build_tiny_student(student_tokenizer, seed=1)
    model.save_pretrained(tmp_path, state_dict=got)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).state_dict()
    assert all(torch.equal(reloaded[k], got[k]) for k in got)


@pytest.mark.parametrize("name", ["reference"] + [s[0] for s in SCENARIOS])
def test_resume_equals_continuing(runs, name):
    run = runs[name]
    assert run["client"] == {"step": STEPS}
    assert run["resumed_losses"] == run["losses"][-1:]
    assert run["resumed_norms"] == run["norms"][-1:]
    for key, value in run["continued"].items():
        assert torch.equal(run["resumed"][key], value), key


@pytest.mark.parametrize("name", [s[0] for s in SCENARIOS])
def test_all_reduce_mean(runs, name):
    assert runs[name]["mean_of_ranks"] == pytest.approx(0.5)
    torch.testing.assert_close(runs[name]["mean_of_ranks_tensor"], torch.tensor([0.5, 1.0]))


def test_deepspeed_started_without_building_the_cpu_shm_op(runs):
    """DeepSpeed's comm backend ran (the ZeRO scenarios above) with no shm op: nothing compiled."""
    assert runs["comm"] == {"shm_op_built": False}


def test_build_ds_config():
    cfg = build_ds_config(zero_stage=3, precision="bf16", micro_batch_size=2, grad_accum_steps=4,
                          world_size=8, max_grad_norm=1.0, offload_optimizer=True, offload_params=True)
    assert cfg["train_batch_size"] == 2 * 4 * 8
    assert "optimizer" not in cfg and "scheduler" not in cfg
    assert cfg["bf16"]["enabled"] and not cfg["fp16"]["enabled"]
    assert cfg["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert cfg["zero_force_ds_cpu_optimizer"] is False
    assert build_ds_config(zero_stage=2, precision="fp32", micro_batch_size=1, grad_accum_steps=1,
                           world_size=1, max_grad_norm=None)["gradient_clipping"] == 0.0
    with pytest.raises(ValueError):
        build_ds_config(zero_stage=2, precision="fp32", micro_batch_size=1, grad_accum_steps=1,
                        world_size=1, max_grad_norm=1.0, offload_params=True)
    with pytest.raises(ValueError):
        build_ds_config(zero_stage=2, precision="int8", micro_batch_size=1, grad_accum_steps=1,
                        world_size=1, max_grad_norm=1.0)

