"""Checkpoint contract: a saved reward model loads with OpenRLHF 0.11.2's own loader,
`get_llm_for_sequence_regression(path, "reward", ...)` (openrlhf/models/model.py), with
sdpa and eager attention, and yields the rewards our scorer serves.

On CPU, `openrlhf.models` cannot be imported as shipped: `openrlhf/models/ring_attn_utils.py`
does `from flash_attn.bert_padding import index_first_axis, pad_input, rearrange, unpad_input`
and `from flash_attn.utils.distributed import all_gather`, and flash-attn needs CUDA. When
the real flash_attn is missing, this test puts a stand-in `flash_attn` on sys.modules whose
padding helpers raise if called: they serve only `packing_samples=True`, so the reward path
tested here never touches them (and the test would fail loudly if it did). On a GPU machine
with flash-attn installed the real module is used. No Ray here; integration tier because
importing OpenRLHF's models (deepspeed, peft) takes ~10-20 s, and the ZeRO-3 check runs
DeepSpeed (CPU, one gloo rank) in a subprocess.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import inspect
import json
import os
import socket
import subprocess
import sys
import types

import pytest
import torch

from idrm_ray.config import ConfigError, load_config
from idrm_ray.core import tiny
from idrm_ray.core.reward_model import load_reward_model, save_reward_model
from idrm_ray.config.ppo import PPOJobConfig
from idrm_ray.serve.scoring import RewardScorer

TEXTS = ["Human: What does the cat like?\n\nAssistant: The cat likes the ball.</s>", "A dog sees.",
         "Human: hello?\n\nAssistant: yes, 0123456789, with care today.</s>"]

for _mod in ("openrlhf", "peft", "accelerate"):
    if importlib.util.find_spec(_mod) is None:
        pytest.skip(f"`import {_mod}` fails: pip install --no-deps openrlhf==0.11.2 peft accelerate pylatexenc "
                    "(as .ci/setup.sh does)", allow_module_level=True)


def _flash_attn_stand_in() -> dict[str, types.ModuleType]:
    import einops

    def unavailable(name):
        def fail(*args, **kwargs):
            raise NotImplementedError(f"flash_attn stand-in: {name} is for packing_samples=True only")
        return fail

    mods = {n: types.ModuleType(n) for n in ("flash_attn", "flash_attn.bert_padding", "flash_attn.utils",
                                             "flash_attn.utils.distributed")}
    for name, mod in mods.items():
        mod.__spec__ = importlib.machinery.ModuleSpec(name, None)  # transformers probes find_spec
    bp = mods["flash_attn.bert_padding"]
    bp.index_first_axis, bp.pad_input, bp.unpad_input = (unavailable(n) for n in ("index_first_axis", "pad_input",
                                                                                    "unpad_input"))
    bp.rearrange = einops.rearrange
    mods["flash_attn.utils.distributed"].all_gather = unavailable("all_gather")
    return mods


@pytest.fixture(scope="module")
def openrlhf_loader():
    import transformers.modeling_utils  # noqa: F401 - let transformers probe the real flash_attn first

    patch = pytest.MonkeyPatch()
    if importlib.util.find_spec("flash_attn") is None:
        for name, mod in _flash_attn_stand_in().items():
            patch.setitem(sys.modules, name, mod)
    from openrlhf.models import get_llm_for_sequence_regression

    yield get_llm_for_sequence_regression
    patch.undo()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, student_tokenizer):
    model = tiny.build_tiny_student(student_tokenizer, num_layers=2, seed=3)
    return save_reward_model(model, student_tokenizer, tmp_path_factory.mktemp("rm") / "model", mean=0.25, std=3.0)


def _left_padded(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenRLHF pads on the left (serve_rm, experience maker); our scorer pads on the right."""
    n = max(len(r) for r in rows)
    ids = torch.full((len(rows), n), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, n - len(r):], mask[i, n - len(r):] = torch.tensor(r), 1
    return ids, mask


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_openrlhf_loader_gives_our_rewards(openrlhf_loader, checkpoint, student_tokenizer, attn):
    # OpenRLHF refuses fp32 (param_dtype in bf16/fp16), so both sides load bf16 weights.
    theirs = openrlhf_loader(str(checkpoint), "reward", param_dtype="bf16", attn_implementation=attn).eval()
    ours = load_reward_model(checkpoint, dtype=torch.bfloat16, attn_implementation=attn)
    assert type(theirs).__name__ == "RewardModel" and theirs.value_head_prefix == "score"
    theirs_sd, ours_sd = theirs.state_dict(), ours.state_dict()
    assert set(theirs_sd) == set(ours_sd)  # model.* backbone + score.weight, nothing re-initialised
    assert all(torch.equal(theirs_sd[k], ours_sd[k]) for k in ours_sd)

    scorer = RewardScorer(ours.float(), student_tokenizer)
    rows = scorer.encode(TEXTS)
    ids, mask = _left_padded(rows, student_tokenizer.pad_token_id)
    with torch.no_grad():
        openrlhf_fp32 = theirs.float()(ids, mask)
    # Same bf16-rounded weights in fp32: OpenRLHF's forward == our scorer's, to float noise.
    torch.testing.assert_close(openrlhf_fp32, torch.tensor(scorer.score_rows(rows).raw), atol=1e-5, rtol=1e-5)

    bf16_theirs = openrlhf_loader(str(checkpoint), "reward", param_dtype="bf16", attn_implementation=attn).eval()
    bf16_ours = RewardScorer.from_checkpoint(checkpoint, dtype="bf16", attn_implementation=attn)
    with torch.no_grad():
        got = bf16_theirs(ids, mask).float()
    # All-bf16 (OpenRLHF's head too) vs our bf16 backbone + fp32 head: a bf16 rounding apart.
    torch.testing.assert_close(got, torch.tensor(bf16_ours.score_rows(rows).raw), atol=2e-2, rtol=2e-2)


def test_openrlhf_normalisation_needs_zero3(openrlhf_loader, checkpoint):
    """OpenRLHF keeps mean/std in non-persistent buffers set in __init__; transformers 5 builds
    the model on the meta device (unless ZeRO-3 is on) and re-creates such buffers with
    `torch.empty_like`, so they hold garbage. Our PPO config refuses the route that hits it."""
    model = openrlhf_loader(str(checkpoint), "reward", param_dtype="bf16", attn_implementation="sdpa",
                            normalize_reward=True)
    restored = abs(model.mean.item() - 0.25) < 1e-2 and abs(model.std.item() - 3.0) < 1e-2
    if restored:
        pytest.skip("OpenRLHF/transformers restore mean/std now: PPOJobConfig's zero_stage guard could be relaxed")
    with pytest.raises(ConfigError, match="in-cluster normalisation needs train.zero_stage=3"):
        load_config(PPOJobConfig, None, ["reward.checkpoint=/rm", "reward.normalize=true", "train.zero_stage=2"])
    assert load_config(PPOJobConfig, None, ["reward.checkpoint=/rm", "reward.normalize=true"]).train.zero_stage == 3


ZERO3_SCRIPT = """
import json, os, sys
import torch, transformers.modeling_utils, deepspeed
{stand_in}
if importlib.util.find_spec("flash_attn") is None:
    sys.modules.update(_flash_attn_stand_in())
from idrm_ray.train.strategy_deepspeed import without_cpu_inference_comm_op
without_cpu_inference_comm_op()  # as our DeepSpeed strategy does: no g++ build of an op ZeRO never calls
deepspeed.init_distributed(dist_backend="gloo")
from openrlhf.models import get_llm_for_sequence_regression
from idrm_ray.serve.scoring import RewardScorer

ckpt = sys.argv[1]
ds_config = {{"zero_optimization": {{"stage": 3}}, "bf16": {{"enabled": True}}, "train_micro_batch_size_per_gpu": 1}}
model = get_llm_for_sequence_regression(ckpt, "reward", param_dtype="bf16", attn_implementation="sdpa",
                                        normalize_reward=True, ds_config=ds_config)
engine, *_ = deepspeed.initialize(model=model, config=ds_config)
engine.eval()
scorer = RewardScorer.from_checkpoint(ckpt, dtype="bf16", normalize_rewards=True)
rows = scorer.encode(json.loads(sys.argv[2]))
n = max(len(r) for r in rows)
ids = torch.zeros(len(rows), n, dtype=torch.long)
mask = torch.zeros(len(rows), n, dtype=torch.long)
for i, r in enumerate(rows):
    ids[i, n - len(r):], mask[i, n - len(r):] = torch.tensor(r), 1
with torch.no_grad():
    theirs = engine(ids, mask).float().tolist()
print(json.dumps({{"mean": model.mean.item(), "std": model.std.item(), "theirs": theirs,
                  "ours": scorer.score_rows(rows).rewards}}))
torch.distributed.barrier()
torch.distributed.destroy_process_group()
"""


def test_openrlhf_normalisation_under_zero3_matches_ours(checkpoint, tmp_path):
    """The route PPOJobConfig allows: OpenRLHF's RewardModelActor loads with a ZeRO-3 eval
    config (no meta device), so the stored mean/std survive; one gloo rank on CPU."""
    script = tmp_path / "zero3.py"
    stand_in = "import importlib.machinery, importlib.util, types\n" + inspect.getsource(_flash_attn_stand_in)
    script.write_text(ZERO3_SCRIPT.format(stand_in=stand_in))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1",
           "LOCAL_RANK": "0", "DS_ACCELERATOR": "cpu"}
    proc = subprocess.run([sys.executable, str(script), str(checkpoint), json.dumps(TEXTS)], env=env,
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (out["mean"], out["std"]) == (pytest.approx(0.25), pytest.approx(3.0))  # saved with the checkpoint
    # Normalised in bf16 by OpenRLHF vs in fp32 by us from bf16 weights: a bf16 rounding apart.
    assert out["theirs"] == pytest.approx(out["ours"], abs=2e-2)
