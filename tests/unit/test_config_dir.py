"""`${config_dir}` in a config file: the folder holding that file (a sweep's best_config.yaml)."""
from __future__ import annotations

from idrm_ray.config import load_config
from idrm_ray.config.train import TrainJobConfig


def test_config_dir_expands_to_the_files_folder(tmp_path, monkeypatch):
    sub = tmp_path / "sweep"
    sub.mkdir()
    (sub / "best.yaml").write_text(
        "teacher:\n  cache_dir: ${config_dir}/map_cache\nrun:\n  output_dir: ${config_dir}\n"
        "data:\n  train: /elsewhere/pairs.jsonl\n")
    monkeypatch.chdir(tmp_path)  # a relative path to the file; the expansion is absolute
    cfg = load_config(TrainJobConfig, "sweep/best.yaml", ["run.name=x"])
    assert cfg.teacher.cache_dir == str(sub / "map_cache")
    assert cfg.run.output_dir == str(sub)
    assert cfg.data.train == "/elsewhere/pairs.jsonl"


def test_overrides_are_not_expanded():
    cfg = load_config(TrainJobConfig, None, ["run.name=${config_dir}"])
    assert cfg.run.name == "${config_dir}"
