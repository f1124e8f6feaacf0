"""`packaged._one_gguf_reader`: within the block, one GGUF reader per file and one tensor-name
map per (architecture, block count) serve every read transformers makes; after it, gguf is as
it was. (The conversion itself runs in the realmodel tier, on an empty cache in CI.)"""
from __future__ import annotations

import pytest

gguf = pytest.importorskip("gguf")

from idrm_ray import packaged  # noqa: E402


def test_name_maps_are_shared_within_the_block_and_gguf_is_restored_after():
    original_reader, original_map = gguf.GGUFReader, gguf.get_tensor_name_map
    with packaged._one_gguf_reader():
        first = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2)
        assert gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2) is first
        other = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 3)
        assert other is not first and other.get_name("model.layers.2.self_attn.q_proj") == "blk.2.attn_q"
        assert first.get_name("model.layers.2.self_attn.q_proj") is None  # two blocks: no block 2
        assert gguf.GGUFReader is not original_reader
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == (original_reader, original_map)


def test_gguf_is_restored_when_the_conversion_fails():
    original_reader = gguf.GGUFReader
    with pytest.raises(RuntimeError, match="boom"), packaged._one_gguf_reader():
        raise RuntimeError("boom")
    assert gguf.GGUFReader is original_reader
