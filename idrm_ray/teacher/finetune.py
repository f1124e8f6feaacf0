"""`idrm-ray teacher`: fine-tune an encoder into a 3-way NLI cross-encoder with Ray Train.

The teacher of ID-RM is an NLI model (DeBERTa-large on SNLI in the paper, METHOD.md §7);
without NLI fine-tuning its maps are much less useful (the paper's Table 3 ablation).
Output: a Hugging Face directory `AutoModelForSequenceClassification` loads, which the
teacher-attention stage then reads.

`batch_size` counts examples per optimizer step over all workers (each takes
`batch_size / world_size`). The learning rate warms up linearly and then decays linearly to 0
(`LinearSchedule`; DeBERTa-large is unstable without warmup), driven by the examples seen so
far, so ragged shards (`equal=False`, `train/ingest.py`) still end the schedule at the last step. Rank 0
prints progress every `log_every` steps and after each epoch.
"""
from __future__ import annotations

import math
import tempfile
import time
from dataclasses import asdict, dataclass

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from idrm_ray import console
from idrm_ray.core.hf_save import save_pretrained
from idrm_ray.train.ingest import synced_batches
from idrm_ray.train.session import RayTrainSession
from idrm_ray.train.strategy import make_strategy
from idrm_ray.train.strategy_base import pick_device

LABELS = {0: "entailment", 1: "neutral", 2: "contradiction"}


@dataclass(frozen=True)
class TeacherFinetuneSpec:
    base_dir: str  # HF encoder directory or hub id to start from
    num_train: int  # training examples per epoch (the schedule's length)
    epochs: int = 2
    lr: float = 5e-4  # peak learning rate, after warmup
    batch_size: int = 32  # examples per optimizer step, all workers together
    warmup_ratio: float = 0.1
    max_len: int = 128
    weight_decay: float = 0.01
    log_every: int = 50  # print progress every this many steps (0: per epoch only)
    seed: int = 0


def per_worker_batch(batch_size: int, num_workers: int) -> int:
    """Examples each worker takes per optimizer step, so that a step sees `batch_size` in all."""
    if num_workers < 1 or batch_size % num_workers:
        raise ValueError(
            f"teacher.finetune.batch_size={batch_size} examples per step do not split evenly over "
            f"{num_workers} workers (teacher.finetune.num_workers); use a multiple of {num_workers}")
    return batch_size // num_workers


@dataclass(frozen=True)
class LinearSchedule:
    """Linear warmup to the peak lr over `warmup_steps`, then linear decay towards 0 at
    `total_steps` (transformers' linear schedule, shifted by one so that neither the first nor
    the last step has lr 0). `warmup_steps = ceil(warmup_ratio * total_steps)`, as plan.py."""

    total_steps: int
    warmup_steps: int

    @classmethod
    def plan(cls, *, num_examples: int, batch_size: int, epochs: int, warmup_ratio: float) -> "LinearSchedule":
        total = epochs * math.ceil(num_examples / batch_size)
        return cls(total_steps=total, warmup_steps=math.ceil(warmup_ratio * total))

    def factor(self, step: float) -> float:
        """LR multiplier of optimizer step `step` (1-based; fractional where the loop counts
        examples seen / batch_size and a batch was short)."""
        if step <= self.warmup_steps:
            return max(step, 0.0) / self.warmup_steps
        span = self.total_steps - self.warmup_steps
        return min(1.0, max(0.0, (self.total_steps - step + 1) / span)) if span > 0 else 0.0


class _Progress:
    """Rank 0's console progress (step/total, loss since the last line, examples/s, ETA), and
    the first, peak and latest learning rate for the epoch reports."""

    def __init__(self, spec: TeacherFinetuneSpec, schedule: LinearSchedule, *, enabled: bool):
        self.spec, self.total_steps, self.enabled = spec, schedule.total_steps, enabled
        self.total_examples = spec.epochs * spec.num_train
        self.seen = self.train_s = 0.0
        self._loss_sum = self._loss_n = 0.0
        self.lrs: dict[str, float] = {}

    def add(self, *, examples: float, loss_sum: float, seconds: float, lr: float) -> None:
        self.lrs = {"lr_first": self.lrs.get("lr_first", lr), "lr_peak": max(self.lrs.get("lr_peak", lr), lr),
                    "lr_last": lr}
        self.seen += examples
        self.train_s += seconds
        self._loss_sum += loss_sum
        self._loss_n += examples

    def line(self, step: int, epoch: int, lr: float) -> None:
        if not self.enabled:
            return
        rate = self.seen / max(self.train_s, 1e-9)
        loss = self._loss_sum / max(self._loss_n, 1.0)
        self._loss_sum = self._loss_n = 0.0
        console.progress("teacher fine-tune", step, self.total_steps, [
            f"epoch {epoch + 1}/{self.spec.epochs}", f"loss {loss:.4f}", f"lr {lr:.2e}", f"{rate:.1f} examples/s"])


def nli_train_loop(config: dict, session=None) -> None:
    """session: a `train.session` session (default: this Ray Train worker's)."""
    session = session or RayTrainSession()
    spec = TeacherFinetuneSpec(**config["spec"])
    torch.manual_seed(spec.seed)
    device = pick_device()
    tokenizer = AutoTokenizer.from_pretrained(spec.base_dir)
    model = AutoModelForSequenceClassification.from_pretrained(
        spec.base_dir, num_labels=3, id2label=LABELS, label2id={v: k for k, v in LABELS.items()}
    ).to(device)
    micro = per_worker_batch(spec.batch_size, session.world_size)
    strategy = make_strategy("torch", micro_batch_size=micro, grad_accum_steps=1, max_grad_norm=1.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    engine = strategy.prepare(model, optimizer, None)
    schedule = LinearSchedule.plan(num_examples=spec.num_train, batch_size=spec.batch_size,
                                   epochs=spec.epochs, warmup_ratio=spec.warmup_ratio)
    progress = _Progress(spec, schedule, enabled=strategy.is_main)
    shard = session.dataset_shard("train")
    all_sum = strategy.all_reduce_sum
    step = 0
    for epoch in range(spec.epochs):
        epoch_start, epoch_loss, epoch_seen = time.perf_counter(), 0.0, 0.0
        t0 = time.perf_counter()
        batches = shard.iter_batches(batch_size=micro, batch_format="numpy")
        for item in synced_batches(batches, all_sum):
            inputs, labels = _encode(tokenizer, item.batch, spec.max_len, device)
            loss = torch.nn.functional.cross_entropy(engine(**inputs).logits, labels)
            strategy.backward(loss if item.real else loss * 0.0)
            # One collective for the step's examples and loss over all ranks; the schedule
            # follows the examples seen (examples / batch_size = steps on even shards).
            n = float(len(labels)) if item.real else 0.0
            n_step, loss_step = strategy.all_reduce_sums([n, float(loss.detach()) * n])
            lr = spec.lr * schedule.factor((progress.seen + n_step) / spec.batch_size)
            for group in optimizer.param_groups:
                group["lr"] = lr
            strategy.step()
            step += 1
            now = time.perf_counter()
            progress.add(examples=n_step, loss_sum=loss_step, seconds=now - t0, lr=lr)
            t0 = now
            epoch_loss, epoch_seen = epoch_loss + loss_step, epoch_seen + n_step
            if spec.log_every and step % spec.log_every == 0:
                progress.line(step, epoch, lr)
        train_s = time.perf_counter() - epoch_start
        metrics = {"epoch": epoch, "train_loss": epoch_loss / max(epoch_seen, 1.0), "steps": step,
                   "train_examples_per_s": epoch_seen / max(train_s, 1e-9), "micro_batch_size": micro,
                   "num_workers": strategy.world_size, **progress.lrs}
        metrics.update(_evaluate(engine, tokenizer, micro, spec.max_len, device, all_sum, session.dataset_shard("eval")))
        if strategy.is_main:
            console.info(f"[idrm] teacher fine-tune epoch {epoch + 1}/{spec.epochs} done in {train_s:.1f} s "
                         f"(step {step}/{schedule.total_steps}): train loss {metrics['train_loss']:.4f}, "
                         f"NLI accuracy {metrics['nli_accuracy']:.3f} on {metrics['eval_pairs']} held out")
        _report(strategy, tokenizer, metrics, session)


def _encode(tokenizer, batch, max_len: int, device: torch.device):
    inputs = tokenizer(
        [str(p) for p in batch["premise"]],
        [str(h) for h in batch["hypothesis"]],
        truncation=True,
        max_length=max_len,
        padding=True,
        return_tensors="pt",
    )
    labels = torch.tensor(batch["label"], dtype=torch.long, device=device)
    return {k: v.to(device) for k, v in inputs.items()}, labels


def _evaluate(engine, tokenizer, micro: int, max_len: int, device, all_sum, shard) -> dict:
    correct = total = 0.0
    engine.eval()
    with torch.no_grad():
        for item in synced_batches(shard.iter_batches(batch_size=micro, batch_format="numpy"), all_sum):
            inputs, labels = _encode(tokenizer, item.batch, max_len, device)
            pred = engine(**inputs).logits.argmax(-1)
            if item.real:
                correct += float((pred == labels).sum())
                total += len(labels)
    engine.train()
    return {"nli_accuracy": all_sum(correct) / max(all_sum(total), 1.0), "eval_pairs": int(all_sum(total))}


def _report(strategy, tokenizer, metrics: dict, session) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        state = strategy.consolidated_state_dict()
        if strategy.rank == 0:
            model = strategy.unwrap()
            save_pretrained(model, tmp, state_dict=state)
            tokenizer.save_pretrained(tmp)
        session.report(metrics, checkpoint_dir=tmp)


def spec_dict(spec: TeacherFinetuneSpec) -> dict:
    return asdict(spec)
