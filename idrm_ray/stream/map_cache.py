"""Teacher-map cache: the frozen teacher's maps for fixed data are computed once and
reused by every run that only changes λ, N or other student settings (DESIGN.md §2
decision 3; the Tune sweeps read it).

Layout: `<cache_dir>/<key>/` holds Parquet files of the encoded stream with one column
per distilled block (`teacher_maps_k0`, `teacher_maps_k1`, ...; k=0 the top block), so
a run with N smaller than the cached N_max reads only its blocks, and reads them back
into the teacher stage's `teacher_maps` column (`records.py` owns both forms); `_SUCCESS`
marks a complete cache (written last, so an interrupted write is never read).

The key is a content hash of everything the maps depend on: the teacher's files
(weights, config, tokenizer), the student's tokenizer files only (unit alignment; its
weights, 16 GB at 8B, do not change the maps), every pair's text, the encode settings,
N_max and the map normalisation; a hub id counts by the commit of its locally cached
snapshot. Any change gives a new key; nothing is ever overwritten in place.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import ray

from idrm_ray import console
from idrm_ray.core.types import PreferenceExample
from idrm_ray.data.records import blocks_to_maps, cache_columns, maps_to_blocks

FORMAT_VERSION = "maps-v2"  # v2: maps over the valid units only (DESIGN.md decision 8)
_HASHED_SUFFIXES = (".json", ".safetensors", ".bin", ".model", ".txt", ".pt")
# What a tokenizer is made of, as `save_pretrained` names it: fast and slow vocabularies,
# BPE merges, sentencepiece (`tokenizer.model`, `spiece.model`) and tiktoken models, templates.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "vocab.txt", "merges.txt", "chat_template.jinja", "chat_template.json")
_TOKENIZER_SUFFIXES = (".model", ".tiktoken")


def hub_revision(repo_id: str) -> str:
    """The commit of the locally cached snapshot of a hub id (its default revision, resolved
    offline by huggingface_hub), or "unresolved" with a note when none is cached."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True)).name
    except (OSError, ValueError):  # not cached (LocalEntryNotFoundError), not a repo id (HFValidationError)
        console.warn(f"map cache: no local snapshot of {repo_id!r}; its key uses the name only, so a new "
                     "revision will not invalidate maps cached for it")
        return "unresolved"


def _hash_path(h: "hashlib._Hash", name_or_path: str, *, tokenizer_only: bool = False) -> None:
    """Hash a local model directory's files (content; with `tokenizer_only`, its top-level
    tokenizer files, or everything when it has none) or, for a hub id, its cached revision."""
    path = Path(name_or_path)
    if not path.exists():
        h.update(f"hub:{name_or_path}@{hub_revision(name_or_path)}".encode())
        return
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _HASHED_SUFFIXES)
    if tokenizer_only:
        tokenizer = sorted(p for p in path.iterdir() if p.is_file() and
                           (p.name in TOKENIZER_FILES or p.suffix in _TOKENIZER_SUFFIXES))
        files = tokenizer or files
    for file in files:
        h.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)


def cache_key(
    *,
    teacher_dir: str,
    student_dir: str,
    examples: list[PreferenceExample],
    encode_kwargs: dict,
    num_blocks: int,
    renormalize: bool | str,
    head_renorm: bool = False,
    map_format: str = "fp16",
) -> str:
    h = hashlib.sha256(FORMAT_VERSION.encode())
    _hash_path(h, teacher_dir)  # the teacher's weights make the maps
    _hash_path(h, student_dir, tokenizer_only=True)  # the student's tokenizer only aligns units
    settings = {k: v for k, v in encode_kwargs.items() if not k.endswith("tokenizer_dir")}
    norm = {"renorm": renormalize, "head_renorm": bool(head_renorm), "format": map_format}
    h.update(json.dumps({"encode": settings, "blocks": num_blocks, **norm}, sort_keys=True).encode())
    for ex in examples:
        h.update(json.dumps([ex.prompt, ex.chosen, ex.rejected, ex.margin]).encode())
    return h.hexdigest()[:24]


def cached_blocks(path: Path) -> int:
    return int(json.loads((path / "_SUCCESS").read_text())["num_blocks"])


def cached_rows(path: Path) -> int:
    """Pairs in a complete cache, from its Parquet files' footers: no map is read, where
    counting the read-back stream would decode every map of the cache."""
    import pyarrow.parquet as pq

    return sum(pq.read_metadata(f).num_rows for f in sorted(Path(path).glob("*.parquet")))


def read_or_build(stream_fn, *, root: str, key: str, num_blocks: int, needed: int) -> ray.data.Dataset:
    """The cached stream with `needed` blocks; builds it first with `stream_fn()` (the
    teacher stage over N_max=`num_blocks` blocks) when the key is absent."""
    path = Path(root) / key
    if not (path / "_SUCCESS").exists():
        tmp = Path(root) / f".{key}.tmp-{os.getpid()}-{time.monotonic_ns()}"
        stream_fn().map_batches(maps_to_blocks, batch_format="numpy", num_cpus=0.1).write_parquet(str(tmp))
        (tmp / "_SUCCESS").write_text(json.dumps({"num_blocks": num_blocks, "key": key}))
        _publish(tmp, path)
        console.info(f"[idrm] teacher maps cached at {path}")
    else:
        console.info(f"[idrm] teacher maps read from cache {path}")
    if needed > cached_blocks(path):
        raise ValueError(f"cache {path} holds {cached_blocks(path)} blocks, the run needs {needed}")
    # Read back into the teacher stage's form: the workers see `teacher_maps` either way.
    return ray.data.read_parquet(str(path), columns=cache_columns(needed)).map_batches(
        blocks_to_maps, batch_format="numpy", num_cpus=0.1)


def _publish(tmp: Path, path: Path) -> None:
    """Move a complete cache into place. Runs in parallel (compare, Tune) may build the same
    key at once: the first to publish wins and the others drop their copy, so a cache
    another run is already reading is never replaced under it."""
    if path.exists() and not (path / "_SUCCESS").exists():
        shutil.rmtree(path, ignore_errors=True)  # an incomplete leftover of an older format
    try:
        tmp.rename(path)
    except OSError:
        if not (path / "_SUCCESS").exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
