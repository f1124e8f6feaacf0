"""The student a run trains, as a path the workers load: `tiny` gives a tokenizer trained on
the bundled texts and a random tiny decoder, saved as a reward-model directory; otherwise
the hub id / local path is used as is. (The teacher's files: `teacher/assets.py`.)
"""
from __future__ import annotations

from pathlib import Path

from idrm_ray.config.train import TrainJobConfig
from idrm_ray.core import tiny
from idrm_ray.core.reward_model import save_reward_model
from idrm_ray.data import tokenizer_corpus


def prepare_student(cfg: TrainJobConfig, run_dir: Path) -> str:
    if cfg.student.name_or_path != "tiny":
        return cfg.student.name_or_path
    out = run_dir / "assets" / "student"
    if not (out / "config.json").exists():
        t = cfg.student.tiny
        tokenizer = tiny.train_student_tokenizer(tokenizer_corpus())
        model = tiny.build_tiny_student(
            tokenizer,
            family=t.family,
            num_layers=t.num_layers,
            hidden_size=t.hidden_size,
            num_heads=t.num_heads,
            num_kv_heads=t.num_kv_heads,
            attn_implementation=cfg.student.attn_implementation,
            seed=t.seed,
        )
        save_reward_model(model, tokenizer, out, metadata={"origin": "tiny random init"})
    return str(out)
