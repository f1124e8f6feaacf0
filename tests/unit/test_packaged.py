"""`packaged._one_gguf_reader`: within the block, one GGUF reader per file and one tensor-name
map per (architecture, block count) serve every read transformers makes; after it, gguf is as
it was; and callers at once convert SmolLM2 once (the lock). (The conversion itself runs in the
realmodel tier, on an empty cache in CI.)"""
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


def test_parallel_callers_convert_smollm2_once(tmp_path, monkeypatch):
    """Three callers at once (threads here; test workers or Ray tasks in use): one converts under
    the lock, the others wait for it and return the published model."""
    import threading
    import time

    calls = []

    def fake_convert(src, out):
        calls.append(out)
        time.sleep(0.3)  # long enough for the other callers to reach the lock
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_bytes(b"weights")

    monkeypatch.setattr(packaged, "_convert_smollm2", fake_convert)
    monkeypatch.setattr(packaged, "_package_dir", lambda name: tmp_path / "package")
    results = []
    threads = [threading.Thread(target=lambda: results.append(packaged.smollm2_dir(tmp_path))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(calls) == 1 and len(results) == 3 and len(set(results)) == 1
    assert packaged.smollm2_converted(tmp_path) and not list(results[0].parent.glob(".*.tmp-*"))
