"""WARM from files (`average_safetensors`): the streamed, chunked average equals the parameter
mean, in single-file and sharded layouts on both sides, and members that cannot be averaged
are refused with one line naming the file."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from idrm_ray.core.baselines import SAFE_INDEX, SAFE_WEIGHTS, average_safetensors, average_state_dicts


def _member(folder, state: dict, *, shards: int = 1):
    """A checkpoint dir with `state` in one file or split over `shards` files plus an index."""
    folder.mkdir(parents=True)
    if shards == 1:
        save_file(state, str(folder / SAFE_WEIGHTS), metadata={"format": "pt"})
        return folder
    keys, weight_map = sorted(state), {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: state[k] for k in keys[i::shards]}
        save_file(part, str(folder / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    (folder / SAFE_INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def _read_dir(folder) -> dict:
    if (folder / SAFE_INDEX).exists():
        files = set(json.loads((folder / SAFE_INDEX).read_text())["weight_map"].values())
        return {k: v for f in files for k, v in load_file(str(folder / f)).items()}
    return load_file(str(folder / SAFE_WEIGHTS))


def test_by_hand_dtypes_buffers_and_scalars(tmp_path):
    a = {"w": torch.tensor([[1.0, 2.0], [5.0, 7.0]]), "n": torch.tensor([7]), "s": torch.tensor(1.0),
         "h": torch.tensor([1.0, 3.0], dtype=torch.bfloat16)}
    b = {"w": torch.tensor([[3.0, 6.0], [1.0, 1.0]]), "n": torch.tensor([9]), "s": torch.tensor(2.0),
         "h": torch.tensor([2.0, 4.0], dtype=torch.bfloat16)}
    files = average_safetensors([_member(tmp_path / "a", a), _member(tmp_path / "b", b)], tmp_path / "out")
    assert files == [tmp_path / "out" / SAFE_WEIGHTS]
    got = load_file(str(files[0]))
    assert got["w"].tolist() == [[2.0, 4.0], [3.0, 4.0]]  # (1+3)/2, (2+6)/2, (5+1)/2, (7+1)/2
    assert got["n"].tolist() == [7]  # integer buffers from member 0, as average_state_dicts
    assert got["s"].item() == 1.5 and got["s"].shape == ()
    assert got["h"].dtype == torch.bfloat16 and got["h"].tolist() == [1.5, 3.5]


def test_chunked_and_sharded_equals_the_mean(tmp_path):
    torch.manual_seed(0)
    states = [{"emb": torch.randn(37, 5), "layer.w": torch.randn(4, 3, 2), "bias": torch.randn(11),
               "empty": torch.zeros(0, 3)} for _ in range(3)]
    members = [_member(tmp_path / f"m{i}", s, shards=1 + i % 2) for i, s in enumerate(states)]  # mixed layouts
    out = tmp_path / "out"
    # 3 rows of fp64 per chunk; files of at most 400 bytes: several chunks and shards.
    files = average_safetensors(members, out, chunk_bytes=3 * 5 * 8, shard_bytes=400)
    assert len(files) > 1 and (out / SAFE_INDEX).exists() and not (out / SAFE_WEIGHTS).exists()
    index = json.loads((out / SAFE_INDEX).read_text())
    assert index["metadata"]["total_size"] == sum(v.numel() * 4 for v in states[0].values())
    got, want = _read_dir(out), average_state_dicts(states)
    assert set(got) == set(want)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-7)
    # Averaging again into the same folder as one file leaves no stale shards behind.
    average_safetensors(members, out)
    assert sorted(p.name for p in out.iterdir()) == [SAFE_WEIGHTS]


def test_refuses_members_that_cannot_be_averaged(tmp_path):
    base = _member(tmp_path / "base", {"w": torch.zeros(2), "v": torch.zeros(2)})
    other_keys = _member(tmp_path / "keys", {"w": torch.zeros(2), "u": torch.zeros(2)})
    other_shape = _member(tmp_path / "shape", {"w": torch.zeros(3), "v": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"WARM member .*keys has different parameters.*same initialisation"):
        average_safetensors([base, other_keys], tmp_path / "out")
    with pytest.raises(ValueError, match=r"WARM member .*shape.*model\.safetensors: parameter w has shape \(3,\)"):
        average_safetensors([base, other_shape], tmp_path / "out")
    (tmp_path / "bin").mkdir()
    with pytest.raises(ValueError, match=r"bin: no model\.safetensors"):
        average_safetensors([base, tmp_path / "bin"], tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_tied_weights_are_averaged_once_and_stay_tied(tmp_path):
    """`save_pretrained` stores a tied LM head once (under the embedding's name): the average
    has the same stored names and loads with the head tied to the averaged embedding."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    members = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / f"m{seed}")
        members.append(tmp_path / f"m{seed}")
    assert "lm_head.weight" not in load_file(str(members[0] / SAFE_WEIGHTS))  # stored once
    average_safetensors(members, tmp_path / "out")
    config.save_pretrained(tmp_path / "out")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    want = (load_file(str(members[0] / SAFE_WEIGHTS))["model.embed_tokens.weight"]
            + load_file(str(members[1] / SAFE_WEIGHTS))["model.embed_tokens.weight"]) / 2
    torch.testing.assert_close(model.model.embed_tokens.weight.data, want)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
