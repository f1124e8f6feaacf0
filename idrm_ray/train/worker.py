"""The train worker loop (DESIGN.md §2): read top to bottom (STYLE.md §5).

build -> prepare -> resume -> for each micro-batch: teacher maps from the stream,
student forward with Q/K capture, L_BT + λ·L_ID, backward, step -> log, eval,
checkpoint. Whoever runs the loop is its SESSION (`train.session`): rank and world
size, the dataset shard, the checkpoints to resume from, and `report(metrics, checkpoint)`
(a Ray Train worker in production, this process for tests and `idrm-ray train --local`).
The math is in `idrm_ray.core`, the parallelism in `idrm_ray.train.strategy` (`make_strategy`).
"""
from __future__ import annotations

import tempfile
import time

import torch

from idrm_ray import console
from idrm_ray.core.baselines import IBRewardHead, fold_ib_state
from idrm_ray.core.objective import RewardForward, preference_loss
from idrm_ray.core.peft_student import (
    ADAPTER_DIR,
    apply_peft,
    check_distilled_trained,
    merge_lora_state,
    plain_skeleton,
    save_adapter,
)
from idrm_ray.core.scoring import pair_outcomes
from idrm_ray.core.reward_model import (
    VALUE_HEAD_PREFIX,
    cached_tokenizer,
    load_reward_model,
    save_reward_model,
)
from idrm_ray.train import checkpointing as ckpt
from idrm_ray.train.ingest import (
    StartedEarly,
    map_bytes_stats,
    stack_rows,
    synced_batches,
    to_student_batch,
    to_teacher_maps,
    truncation_stats,
)
from idrm_ray.train.monitor import StudentMonitor, WandbLogger
from idrm_ray.train.session import RayTrainSession
from idrm_ray.train.spec import WorkerSpec
from idrm_ray.train.step_metrics import StepAccumulator
from idrm_ray.train.strategy import make_strategy
from idrm_ray.train.strategy_base import pick_device, torch_dtype


def train_loop_per_worker(config: dict, session=None) -> None:
    """config: {"spec": WorkerSpec dict, "eval": encoded eval rows (an object-store ref under
    Ray)}; session: a `train.session` session (default: this Ray Train worker's)."""
    session = session or RayTrainSession()
    spec, train_shard = WorkerSpec.from_dict(config["spec"]), session.dataset_shard("train")
    # A fresh start reads epoch 0 from its first pair: its stream can start before the model is
    # built (a resumed run's epoch and position are known only once its checkpoint is read).
    candidates = session.resume_candidates()  # newest first; read once, here and by the resume
    early = None
    if session.starts_stream_early and not candidates:
        early = StartedEarly(_epoch_batches(train_shard, spec, 0))
    run = _WorkerRun(spec, session=session, eval_rows=session.fetch(config["eval"]), candidates=candidates)
    progress = run.progress
    for epoch in range(progress.epoch, spec.epochs):
        progress.epoch = epoch
        stream = early if early is not None and epoch == 0 else _epoch_batches(train_shard, spec, epoch)
        for micro, item in enumerate(synced_batches(stream, run.strategy.all_reduce_sum)):
            if micro < progress.micro_in_epoch:
                continue  # resumed mid-epoch: these pairs were trained on before the failure
            run.micro_step(micro, item)
            if run.done():
                break  # every rank reaches this at the same step (done() changes only at a boundary)
        if run.done():
            break
        progress.micro_in_epoch = 0
    run.evaluate_and_checkpoint(final=True)
    run.strategy.barrier()


def _epoch_batches(train_shard, spec: WorkerSpec, epoch: int):
    """This rank's micro-batches of one epoch (a seeded local shuffle where the spec asks)."""
    return train_shard.iter_batches(
        batch_size=spec.micro_batch_size, batch_format="numpy", prefetch_batches=spec.prefetch_batches,
        local_shuffle_buffer_size=spec.shuffle_buffer or None,
        local_shuffle_seed=spec.seed + epoch if spec.shuffle_buffer else None,
    )


class _WorkerRun:
    """State of one worker: model, strategy, progress, metric accumulators."""

    def __init__(self, spec: WorkerSpec, *, session, eval_rows: list[dict], candidates: list) -> None:
        torch.manual_seed(spec.seed)
        self.spec, self.session, self.eval_rows, self.device = spec, session, eval_rows, pick_device()
        self.strategy = make_strategy(
            spec.strategy, zero_stage=spec.zero_stage, precision=spec.precision,
            micro_batch_size=spec.micro_batch_size, grad_accum_steps=spec.grad_accum_steps,
            max_grad_norm=spec.max_grad_norm, offload_optimizer=spec.offload_optimizer,
            offload_params=spec.offload_params,
        )
        self.model = _load_student(spec, self.strategy)
        # InfoRM: the IB head replaces the `score` layer in training; saved folded into it.
        self.ib_head = IBRewardHead(self.model.config.hidden_size, spec.ib_latent_dim) if spec.ib_latent_dim else None
        module = RewardForward(self.model, head=self.ib_head).to(self.device)
        optimizer, self.scheduler = _optimizer(module, spec)
        self.engine = self.strategy.prepare(module, optimizer, self.scheduler)
        self.forward = _autocast(self.engine, self.strategy)  # the maps themselves stay fp32
        self.progress = self._resume(candidates)
        self.monitor = StudentMonitor(method=spec.method) if self.strategy.rank == 0 else None  # rows are global
        self.logged_step = self.progress.step
        self.wandb = _wandb(spec) if self.strategy.rank == 0 else None
        self.acc = StepAccumulator()
        self.saved_step = -1  # step of the last checkpoint this process reported
        self.window_bad, self.bad_components = False, []  # a non-finite loss in the current window

    def done(self) -> bool:
        """Only an explicit step cap stops early: with uneven shards an epoch can take more
        steps than planned, and every pair must still be trained on."""
        return self.spec.max_steps is not None and self.progress.step >= self.spec.max_steps

    def micro_step(self, micro: int, item) -> bool:
        """One forward/backward; returns True when it ended a window with an optimizer step
        (False between boundaries and for a dropped window, which still counts as a step)."""
        spec, strategy, progress = self.spec, self.strategy, self.progress
        t0 = time.perf_counter()
        batch = to_student_batch(item.batch, pad_id=spec.pad_id, device=self.device, use_margin=spec.use_margin)
        teacher = to_teacher_maps(item.batch, device=self.device) if spec.id_settings else None
        local_pairs = batch.num_pairs if item.real else 0
        loss, metrics = preference_loss(  # normalised by the local pairs; rescaled below
            self.model, batch, teacher, settings=spec.id_settings, forward=self.forward,
            bt=spec.bt_settings, ib_head=self.ib_head,
        )
        metrics.update(truncation_stats(item.batch))
        if teacher is not None:
            metrics.update(map_bytes_stats(item.batch, num_blocks=spec.id_settings.top_n))
        # ONE packed all-reduce: how many ranks have a finite loss, and the step's global pairs.
        finite, global_pairs = strategy.all_reduce_sums([float(torch.isfinite(loss).item()), local_pairs])
        # Data-parallel normaliser (STYLE.md §1): the loss is a sum over the global pairs divided
        # by global/world (DDP and DeepSpeed average over ranks); a filler's weight is 0.
        loss = loss * (local_pairs / max(global_pairs / strategy.world_size, 1e-12))
        if finite < strategy.world_size:
            self._note_nonfinite(metrics)  # no backward on any rank; the whole window is dropped
        else:
            strategy.backward(loss)
        bad_window = self.window_bad
        stepped = strategy.step(skip=bad_window)
        progress.micro_in_epoch = micro + 1  # same on every rank (lock-step)
        progress.pairs_seen += int(global_pairs)
        # Fillers too (with 0 pairs): `flush` all-reduces every metric key, so every rank must
        # hold the same keys even when its shard ran out for a whole log interval.
        self.acc.add(metrics, pairs=local_pairs, wait_s=item.wait_s, busy_s=time.perf_counter() - t0)
        if stepped is None:
            return False
        # A window with a non-finite loss counts as skipped whatever the strategy did (DeepSpeed
        # fp32 / bf16 ZeRO-3 step on its other micro-batches), so K in a row still stop the run.
        stepped = stepped and not bad_window
        self._end_window(stepped)
        progress.step += 1
        self._after_step()
        return stepped

    def _end_window(self, stepped: bool) -> None:
        """Count a dropped window (non-finite loss or gradients; weights untouched) and stop
        after `max_nonfinite_steps` in a row."""
        progress, self.window_bad = self.progress, False
        if stepped:
            progress.nonfinite_streak = 0
            return
        progress.nonfinite_skipped += 1
        progress.nonfinite_streak += 1
        console.warn(f"{self.spec.method}: step {progress.step + 1} skipped: non-finite loss or gradients "
                     f"({progress.nonfinite_skipped} skipped so far)")
        if progress.nonfinite_streak >= self.spec.max_nonfinite_steps:
            raise FloatingPointError(
                f"{progress.nonfinite_streak} consecutive non-finite losses or gradients, at step {progress.step + 1} "
                f"(non-finite components: {', '.join(self.bad_components) or 'gradients'}); "
                "lower the learning rate or check the data")

    def _after_step(self) -> None:
        spec, step = self.spec, self.progress.step
        if step % max(spec.log_every, 1) == 0:
            row = self.acc.flush(self.strategy, step=step, lr=self.scheduler.get_last_lr()[0])
            self.progress.history.append(row)
            if self.monitor is not None:
                self.monitor.record(row, steps=step - self.logged_step)
            self.logged_step = step
            if self.wandb:
                self.wandb.log(row, step=step)
            if self.strategy.rank == 0:
                console.progress(_progress_label(spec), step, spec.total_steps, _progress_fields(row))
        if self.done():
            return  # the final evaluation and checkpoint follow the loop
        due_eval = spec.eval_every and step % spec.eval_every == 0
        due_ckpt = spec.checkpoint_every and step % spec.checkpoint_every == 0
        if due_eval or due_ckpt:
            self.evaluate_and_checkpoint(final=False, save=bool(due_ckpt))

    def evaluate_and_checkpoint(self, *, final: bool, save: bool = True) -> None:
        progress = self.progress
        if final and self.saved_step == progress.step and not self.acc.steps:
            return  # the last step was evaluated and checkpointed already (epoch end on a due step)
        if final and self.acc.steps:
            progress.history.append(self.acc.flush(self.strategy, step=progress.step, lr=None))
        metrics = self.evaluate()
        evals = dict(metrics)
        metrics.update(step=progress.step, epoch=progress.epoch, pairs_seen=progress.pairs_seen,
                       nonfinite_skipped=progress.nonfinite_skipped)
        if progress.history and progress.history[-1]["step"] == progress.step:
            progress.history[-1].update(evals)
        else:
            progress.history.append({"step": progress.step, **evals})
        if self.wandb:
            self.wandb.log(evals, step=progress.step)
            if final:
                self.wandb.finish()
        if save or final:
            self._save_checkpoint(metrics)
        else:
            self.session.report(metrics)

    def _save_checkpoint(self, metrics: dict) -> None:
        self.saved_step = self.progress.step
        with tempfile.TemporaryDirectory() as tmp:
            state = self.strategy.consolidated_state_dict()  # a collective: every rank calls it
            state, extra = _model_state(state)
            if self.strategy.rank == 0:
                model, peft, out = self.model, self.spec.peft, ckpt.model_dir(tmp)
                if peft.lora:  # an ordinary merged reward model; the adapter alone in model/adapter/
                    save_adapter(out / ADAPTER_DIR, state, peft, num_blocks=model.config.num_hidden_layers,
                                 base_model=self.spec.student_dir)
                    model, state = plain_skeleton(model), merge_lora_state(state, peft)
                save_reward_model(
                    model, cached_tokenizer(self.spec.student_dir), out, state_dict=state,
                    metadata={"method": self.spec.method, "render": self.spec.render, "peft": peft.to_metadata(),
                              **metrics, **extra},
                )
                ckpt.write_progress(tmp, self.progress)
            self.strategy.save_state(ckpt.state_dir(tmp))
            self.session.report(metrics, checkpoint_dir=tmp)

    def evaluate(self) -> dict:
        """BT accuracy and loss on this rank's slice of the eval pairs (student inputs only).

        The eval set is encoded once by the driver and shared through the object store: a
        second Ray Data stream beside the paused training stream would compete for the
        same CPU budget on small machines (Ray Data rejects the negative budget)."""
        micro, strategy = self.spec.micro_batch_size, self.strategy
        mine = self.eval_rows[strategy.rank :: strategy.world_size]
        batches = (stack_rows(mine[i : i + micro]) for i in range(0, len(mine), micro))
        sums = torch.zeros(3, dtype=torch.float64)  # correct, loss, pairs
        self.engine.eval()
        with torch.no_grad():
            for item in synced_batches(batches, strategy.all_reduce_sum, filler=stack_rows(self.eval_rows[:1])):
                batch = to_student_batch(item.batch, pad_id=self.spec.pad_id, device=self.device)
                r_w, r_l = self.forward(batch.input_ids, batch.attention_mask).float().split(batch.num_pairs)
                if item.real:  # a tie counts 0.5, as `idrm-ray eval` counts it (core.scoring.pair_outcomes)
                    wins = float(pair_outcomes(r_w.double().cpu().numpy(), r_l.double().cpu().numpy()).sum())
                    sums += torch.tensor([wins, -torch.nn.functional.logsigmoid(r_w - r_l).sum().item(), batch.num_pairs])
        self.engine.train()
        correct, loss, pairs = (strategy.all_reduce_sum(float(v)) for v in sums)
        return {"eval_accuracy": correct / max(pairs, 1.0), "eval_loss": loss / max(pairs, 1.0), "eval_pairs": int(pairs)}

    def _resume(self, candidates: list) -> ckpt.Progress:
        """Progress from the latest of `candidates` (the session's checkpoints, newest first);
        when it is unreadable (truncated, corrupt), say so and fall back to the previous good
        one. Never a silent fresh start: with no readable checkpoint at all the run stops with
        the list of what was tried."""
        if not candidates:
            return ckpt.Progress()
        problems = []
        for candidate in candidates:
            try:
                with candidate.as_directory() as d:
                    progress = ckpt.check_complete(d)
                    self.strategy.load_state(ckpt.state_dir(d))
            except Exception as exc:  # noqa: BLE001 - any unreadable part: try the previous one
                problems.append(f"{candidate.path}: {exc}")
                console.warn(f"cannot resume from checkpoint {candidate.path}: {exc}")
                continue
            if problems:
                console.warn(f"fell back to the previous good checkpoint {candidate.path}")
            console.info(f"[idrm] {self.spec.method}: resumed at step {progress.step} (epoch {progress.epoch}, "
                         f"{progress.pairs_seen} pairs seen)")
            return progress
        raise ckpt.CheckpointError(
            "no readable checkpoint to resume from; refusing to start over: " + "; ".join(problems))

    def _note_nonfinite(self, metrics: dict) -> None:
        """A non-finite loss on some rank: this micro-batch is not backpropagated and its whole
        accumulation window is dropped at the boundary (`strategy.step(skip=True)`)."""
        self.window_bad = True
        self.bad_components = [k for k, v in metrics.items() if torch.is_tensor(v) and not torch.isfinite(v).all()]


def _autocast(engine, strategy):
    """The reward forward under the strategy's autocast (bf16 on the plain-torch GPU path,
    nothing otherwise). Only the model forward: the simulated maps and losses are computed in
    fp32 outside it (METHOD.md §5), which autocast would otherwise turn into bf16 matmuls."""
    def forward(input_ids, attention_mask):
        with strategy.autocast():
            return engine(input_ids, attention_mask)

    return forward


def _load_student(spec: WorkerSpec, strategy):
    """The student in its planned dtype and attention kernel; under ZeRO-3 partitioned as it
    loads (`strategy.load_reward_model`). Gradient checkpointing is non-reentrant: the Q/K
    capture needs the recomputed blocks to carry gradients (core/capture.py). Then only what
    `spec.peft` trains keeps requires_grad (core/peft_student.py)."""
    model = strategy.load_reward_model(spec.student_dir, dtype=torch_dtype(spec.student_dtype),
                                       attn_implementation=spec.attn_implementation,
                                       tokenizer=cached_tokenizer(spec.student_dir))
    if spec.id_settings is not None:  # the config refuses this first; a hand-built spec too
        check_distilled_trained(spec.peft, top_n=spec.id_settings.top_n)
    apply_peft(model, spec.peft)  # top blocks / LoRA: the frozen rest gets no grads or optimizer state
    if spec.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def _progress_label(spec: WorkerSpec) -> str:
    """`<run folder>/<method> seed <s>`: unique among parallel runs (ensemble members differ
    by seed); the console leaves off the job's own run folder name."""
    return f"{spec.run_name}/{spec.method} seed {spec.seed}"


def _progress_fields(row: dict) -> list[str]:
    """The console's figures of a logged step (`console.progress` adds step, bar and ETA)."""
    parts = [f"loss {row.get('loss', float('nan')):.4f}"]
    if "l_id" in row:
        parts.append(f"l_id {row['l_id']:.4f}")
    return [*parts, f"acc {row.get('accuracy', float('nan')):.2f}", f"{row['pairs_per_s']:.1f} pairs/s",
            f"wait {row['teacher_wait_fraction']:.0%}"]


def _wandb(spec: WorkerSpec) -> WandbLogger | None:
    if spec.wandb_mode == "disabled":
        return None
    return WandbLogger(
        project=spec.wandb_project, mode=spec.wandb_mode, name=f"{spec.run_name}-{spec.method}",
        config=spec.to_dict(), directory=spec.wandb_dir or ".",
    )


def _optimizer(model: torch.nn.Module, spec: WorkerSpec):
    from transformers import get_scheduler

    params = [p for p in model.parameters() if p.requires_grad]
    # Plain torch: the fused AdamW kernel (CPU and GPU), 5x faster than the default per-tensor
    # loop on a 133M-parameter CPU step (`python -m idrm_ray.bench.optimizer_step`: 0.074 s vs
    # 0.372 s on 2 threads); DeepSpeed partitions and steps the optimizer it is given, so it keeps
    # the default one.
    fused = {"fused": True} if spec.strategy == "torch" else {}
    optimizer = torch.optim.AdamW(params, lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay, **fused)
    scheduler = get_scheduler(
        "constant_with_warmup" if spec.schedule == "constant" else spec.schedule,
        optimizer,
        num_warmup_steps=spec.warmup_steps,
        num_training_steps=max(spec.total_steps, 1),
    )
    return optimizer, scheduler


def _model_state(state: dict | None) -> tuple[dict | None, dict]:
    """The HF model's state from the engine's (RewardForward: `model.*`, InfoRM's `head.*`
    folded into the `score` weight), plus metadata about the fold."""
    if state is None:
        return None, {}
    head = {k.removeprefix("head."): v for k, v in state.items() if k.startswith("head.")}
    model = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    if not head:
        return model, {}
    weight, bias = fold_ib_state(head)
    model[f"{VALUE_HEAD_PREFIX}.weight"] = weight.to(model[f"{VALUE_HEAD_PREFIX}.weight"].dtype)
    return model, {"inform_folded_bias": bias}


