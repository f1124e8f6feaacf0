"""What the ID-step benchmark measures, apart from step time.

- `CONFIGS` / `train_step`: the benchmarked steps, each exactly the train loop's
  (`preference_loss` forward, backward, AdamW step); "BT" passes `settings=None`.
- `peak_bytes`: peak of live CPU tensor bytes inside a region, from the profiler's raw
  allocation events (`kineto_results.events()`, name "[memory]", signed sizes) summed in
  time order; relative to what was live at entry. Counts torch allocations only.
- `rss_child` (`python -m idrm_ray.bench.measure PAYLOAD CONFIG [THREADS]`): one
  configuration in a fresh process; resident-set growth of one step over a baseline taken
  after model build and a short warm-up step, as the kernel reports it (VmHWM; see there
  why not ru_maxrss).
- `naive_simulated_maps`: a dense H x n x n implementation of METHOD.md Eq. 6-7 + Pool, the
  reference that the chunked, checkpointed `simulated_maps` is compared with.
"""
from __future__ import annotations

import gc
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import AutoConfig, AutoModelForSequenceClassification

from idrm_ray.bench.workload import top_blocks
from idrm_ray.core.losses import id_loss
from idrm_ray.core.objective import IDSettings, preference_loss
from idrm_ray.core.simulated import simulated_maps
from idrm_ray.core.types import BLOCKS, BlockMaps, CapturedQK, PreferenceBatch

SMALL_CHUNK = 64  # query rows per chunk of the memory-lean variant
CONFIGS: dict[str, IDSettings | None] = {  # the benchmarked steps; None: BT only
    "BT": None,
    "ID N=1": IDSettings(top_n=1),
    "ID N=2": IDSettings(top_n=2),
    f"N=1 rows={SMALL_CHUNK}": IDSettings(top_n=1, chunk_rows=SMALL_CHUNK),
}
_NEG = torch.finfo(torch.float32).min


def teacher_for(maps: BlockMaps, name: str) -> BlockMaps | None:
    """The teacher maps configuration `name` distils from (its top N blocks), None for BT."""
    settings = CONFIGS[name]
    return top_blocks(maps, settings.top_n) if settings else None


def train_step(model, opt: torch.optim.Optimizer, batch: PreferenceBatch, teacher: BlockMaps, name: str) -> float:
    """One step of configuration `name` (zero_grad, forward, backward, AdamW); returns the loss."""
    opt.zero_grad(set_to_none=True)
    loss, _ = preference_loss(model, batch, teacher_for(teacher, name), settings=CONFIGS[name])
    loss.backward()
    opt.step()
    return float(loss.detach())


def static_bytes(model) -> int:
    """Weights + AdamW state (exp_avg, exp_avg_sq): live before and after every step."""
    return 3 * sum(p.numel() * p.element_size() for p in model.parameters())


# ---------------------------------------------------------------- profiler peak


def peak_bytes(fn: Callable[[], object]) -> tuple[int, object]:
    """(peak live bytes above entry, profiler) while `fn` runs. Frees of tensors that were
    live at entry count negative, so a step that frees and re-allocates is not double-counted."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak, prof


def self_cpu_us(prof) -> dict[str, float]:
    """Self CPU time (µs) per op name of a profiled region."""
    return {a.key: a.self_cpu_time_total for a in prof.key_averages()}


# ---------------------------------------------------------------- naive simulated maps


def _dense_units(unit: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, n, U) 0/1 G of METHOD.md §6: token -> unit, only tokens of valid units."""
    num_units = valid.shape[1]
    ok = (unit >= 0) & (mask > 0)
    safe = unit.clamp(0, num_units - 1)
    ok = ok & valid.gather(1, safe)
    return torch.nn.functional.one_hot(safe, num_units).float() * ok[..., None]


def naive_simulated_maps(qk: CapturedQK, batch: PreferenceBatch) -> BlockMaps:
    """Dense reference: per block map the whole (B, H, n, n) logits and softmax (autograd keeps
    them), head mean, then Pool(P) = diag(G_q^T 1)^-1 G_q^T P G_k with dense G. Top block only."""
    bsz = batch.num_pairs
    rows = {"w": slice(0, bsz), "l": slice(bsz, 2 * bsz)}
    valid = {"w": batch.unit_valid_w, "l": batch.unit_valid_l}
    g = {h: _dense_units(batch.student_unit[r], batch.attention_mask[r], valid[h]) for h, r in rows.items()}
    q_all, k_all = qk.q[0].float(), qk.k[0].float()  # (2B, H, n, d), (2B, H_kv, n, d)
    group = q_all.shape[1] // k_all.shape[1]
    out = {}
    for name in BLOCKS:
        a, b = name
        k = k_all[rows[b]].repeat_interleave(group, dim=1)  # (B, H, n, d): head h reads kv head h // G
        logits = q_all[rows[a]] @ k.transpose(-1, -2) / math.sqrt(q_all.shape[-1])  # (B, H, n, n)
        keep = g[b].sum(-1) > 0  # (B, n) keys of valid units
        probs = torch.softmax(logits.masked_fill(~keep[:, None, None, :], _NEG), dim=-1).mean(1)  # (B, n, n)
        pooled = g[a].transpose(1, 2) @ probs @ g[b]  # (B, U_a, U_b): rows summed, keys summed
        out[name] = (pooled / g[a].sum(1)[..., None].clamp(min=1.0))[:, None]  # rows averaged; (B, 1, U_a, U_b)
    return BlockMaps(**out, valid_w=batch.unit_valid_w, valid_l=batch.unit_valid_l)


def simulated_map_memory(qk: CapturedQK, batch: PreferenceBatch, teacher: BlockMaps,
                         *, small_chunk: int = SMALL_CHUNK) -> dict[str, float]:
    """Peak bytes of maps forward + L_ID + backward into Q/K leaves (top block): naive dense,
    chunked with the default budget, chunked with `small_chunk` query rows; and the largest
    absolute difference between the naive and chunked maps (a correctness check)."""
    leaves = CapturedQK(q=[qk.q[0].detach().requires_grad_()], k=[qk.k[0].detach().requires_grad_()])

    def run(maps_fn) -> Callable[[], None]:
        def go():
            loss, _ = id_loss(maps_fn(), teacher)
            loss.backward()
            leaves.q[0].grad = leaves.k[0].grad = None
        return go

    naive = lambda: naive_simulated_maps(leaves, batch)  # noqa: E731
    chunked = lambda: simulated_maps(leaves, batch)  # noqa: E731
    small = lambda: simulated_maps(leaves, batch, chunk_rows=small_chunk)  # noqa: E731
    with torch.no_grad():
        diff = max(float((naive().block(n) - chunked().block(n)).abs().max()) for n in BLOCKS)
    out = {"naive": peak_bytes(run(naive))[0], "chunked": peak_bytes(run(chunked))[0]}
    out[f"chunked_{small_chunk}"] = peak_bytes(run(small))[0]
    out["max_abs_diff"] = diff
    return out


# ---------------------------------------------------------------- fresh-process RSS


def save_payload(path: Path, model, warm, works) -> None:
    """What a child needs to rebuild the steps: student config + weights, a short warm-up
    workload and the measured ones (batches and teacher maps)."""
    model.config.save_pretrained(path)
    torch.save({
        "state": model.state_dict(),
        "warm": (warm.batch, warm.teacher), "main": [(w.length, w.batch, w.teacher) for w in works],
    }, path / "payload.pt")


def _status_kib(field: str) -> int:
    """A /proc/self/status counter in KiB: VmRSS (resident now) or VmHWM (its high-water mark)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0, `echo 5 > /proc/self/clear_refs`)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def rss_child(path: Path, name: str) -> dict[int, dict[str, float]]:
    """Configuration `name` in this (fresh) process: build, warm up at the short length (AdamW
    state, one-time library buffers), then per measured length, shortest first: take the
    current RSS as baseline, run one step, record the growth of the high-water mark over the
    baseline in bytes. Run with MALLOC_MMAP_THRESHOLD_ set (see id_step.rss_all), freed
    buffers leave the RSS, so each length starts from the same footing.

    The mark is the kernel's VmHWM, reset to the baseline first. ru_maxrss is the same
    counter but also keeps the mark of the image this process was exec'ed from: after
    Python's vfork + exec it starts at the parent's high-water mark (GiBs here) and would
    hide the step. Without a reset (old kernels) earlier marks are a floor: `exact` False.
    """
    config = AutoConfig.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_config(config, attn_implementation="sdpa")
    payload = torch.load(path / "payload.pt", weights_only=False)
    model.load_state_dict(payload["state"])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    train_step(model, opt, *payload["warm"], name)
    works = sorted(payload.pop("main"), key=lambda w: w[0])
    del payload
    out = {}
    for length, batch, teacher in works:
        opt.zero_grad(set_to_none=True)
        gc.collect()
        reset = _reset_hwm()
        # After a reset the mark is the RSS at that instant: the baseline. Read as VmRSS instead, a
        # page freed by another thread (Ray's, the allocator's) between the two reads left the
        # mark below the baseline and the growth negative (seen in a pytest process).
        base = _status_kib("VmHWM") if reset else _status_kib("VmRSS")
        mark_before = _status_kib("VmHWM")
        train_step(model, opt, batch, teacher, name)
        peak = _status_kib("VmHWM")
        out[length] = {"rss_step": 1024 * (peak - base), "exact": reset or peak > mark_before,
                       "baseline_rss": 1024 * base}
    return out


if __name__ == "__main__":
    torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 1)
    print(json.dumps(rss_child(Path(sys.argv[1]), sys.argv[2])))


def print_table(title: str, head: list[str], rows: list[list[str]]) -> None:
    """A right-aligned text table under its title (the benchmarks' reports)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    print(f"\n{title}")
    print(" | ".join(h.rjust(w) for h, w in zip(head, widths)))
    for r in rows:
        print(" | ".join(c.rjust(w) for c, w in zip(r, widths)))
