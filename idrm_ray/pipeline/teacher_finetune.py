"""`idrm-ray teacher`: fine-tune an encoder into a 3-way NLI cross-encoder with Ray Train.

The teacher of ID-RM is an NLI model (DeBERTa-large on SNLI in the paper, METHOD.md §7);
without NLI fine-tuning its maps are much less useful (the paper's Table 3 ablation).
Output: a Hugging Face directory `AutoModelForSequenceClassification` loads, which the
teacher-attention stage then reads.
"""
from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass

import ray.train
import torch
from ray.train import Checkpoint
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from idrm_ray.pipeline.ingest import synced_batches
from idrm_ray.train.strategy import make_strategy, pick_device

LABELS = {0: "entailment", 1: "neutral", 2: "contradiction"}


@dataclass(frozen=True)
class TeacherFinetuneSpec:
    base_dir: str  # HF encoder directory or hub id to start from
    epochs: int = 2
    lr: float = 5e-4
    micro_batch_size: int = 32
    max_len: int = 128
    weight_decay: float = 0.01
    seed: int = 0


def nli_train_loop(config: dict) -> None:
    spec = TeacherFinetuneSpec(**config["spec"])
    torch.manual_seed(spec.seed)
    device = pick_device()
    tokenizer = AutoTokenizer.from_pretrained(spec.base_dir)
    model = AutoModelForSequenceClassification.from_pretrained(
        spec.base_dir, num_labels=3, id2label=LABELS, label2id={v: k for k, v in LABELS.items()}
    ).to(device)
    strategy = make_strategy("torch", micro_batch_size=spec.micro_batch_size, grad_accum_steps=1, max_grad_norm=1.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    engine = strategy.prepare(model, optimizer, None)
    shard = ray.train.get_dataset_shard("train")
    all_sum = strategy.all_reduce_sum
    for epoch in range(spec.epochs):
        loss_sum = seen = 0.0
        batches = shard.iter_batches(batch_size=spec.micro_batch_size, batch_format="numpy")
        for item in synced_batches(batches, all_sum):
            inputs, labels = _encode(tokenizer, item.batch, spec.max_len, device)
            loss = torch.nn.functional.cross_entropy(engine(**inputs).logits, labels)
            strategy.backward(loss if item.real else loss * 0.0)
            strategy.step()
            if item.real:
                loss_sum += float(loss) * len(labels)
                seen += len(labels)
        metrics = {"epoch": epoch, "train_loss": all_sum(loss_sum) / max(all_sum(seen), 1.0)}
        metrics.update(_evaluate(engine, tokenizer, spec, device, all_sum))
        _report(strategy, tokenizer, metrics)


def _encode(tokenizer, batch, max_len: int, device: torch.device):
    inputs = tokenizer(
        [str(p) for p in batch["premise"]],
        [str(h) for h in batch["hypothesis"]],
        truncation=True,
        max_length=max_len,
        padding=True,
        return_tensors="pt",
    )
    labels = torch.as_tensor(batch["label"], dtype=torch.long, device=device)
    return {k: v.to(device) for k, v in inputs.items()}, labels


def _evaluate(engine, tokenizer, spec: TeacherFinetuneSpec, device, all_sum) -> dict:
    shard = ray.train.get_dataset_shard("eval")
    correct = total = 0.0
    engine.eval()
    with torch.no_grad():
        for item in synced_batches(shard.iter_batches(batch_size=spec.micro_batch_size, batch_format="numpy"), all_sum):
            inputs, labels = _encode(tokenizer, item.batch, spec.max_len, device)
            pred = engine(**inputs).logits.argmax(-1)
            if item.real:
                correct += float((pred == labels).sum())
                total += len(labels)
    engine.train()
    return {"nli_accuracy": all_sum(correct) / max(all_sum(total), 1.0), "eval_pairs": int(all_sum(total))}


def _report(strategy, tokenizer, metrics: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        state = strategy.consolidated_state_dict()
        if strategy.rank == 0:
            model = strategy.unwrap()
            model.save_pretrained(tmp, state_dict=state)
            tokenizer.save_pretrained(tmp)
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))


def spec_dict(spec: TeacherFinetuneSpec) -> dict:
    return asdict(spec)
