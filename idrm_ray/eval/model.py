"""The checkpoint under evaluation (`idrm-ray eval`): the command's options, how a
checkpoint is found, labelled and rendered (its run's `config.yaml` and recorded render),
and `LoadedModel`, which encodes pairs and completions as training did and scores them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from idrm_ray.core.scoring import RewardScorer, encode_with_stats
from idrm_ray.eval.bestofn import CompletionSet, encode_completions
from idrm_ray.eval.layouts import EvalSet

__all__ = ["DEFAULT_MAX_LEN", "EvalError", "EvalOptions", "LoadedModel", "checkpoint_render", "default_label",
           "default_output_dir", "run_config_of"]

DEFAULT_MAX_LEN = 1024


class EvalError(ValueError):
    """Bad eval request (not bad data): printed as one line by the CLI."""


@dataclass(frozen=True)
class EvalOptions:
    checkpoint: str
    data: tuple[str, ...]
    layout: str = "auto"
    split: str | None = None
    render: str = "auto"  # hh: RewardBench prompts as one HH turn; raw: as they are; auto: raw for chat-trained
    output_dir: str | None = None
    label: str | None = None  # the model's name in reports (default: run/method or dir name)
    max_pairs: int | None = None
    skip_bad_rows: bool = False
    max_len: int | None = None  # None: the run's student.max_len, else 1024
    template: tuple[str, str, str] | str | None = None  # "chat" or a tuple; None: as the checkpoint was trained
    batch_size: int = 16
    device: str = "auto"
    dtype: str = "auto"
    use_ray: bool = False  # score with a Ray Data actor pool of the Ray the caller started
    ray_concurrency: int = 1
    ray_gpus: float = 0.0
    baseline: str | None = None  # a checkpoint, or an eval folder holding scores.jsonl
    pair_score: str = "prob"
    n_boot: int = 2000
    seed: int = 0
    diagnostics: bool = False
    diag_pairs: int = 64
    token_view_pair: int | None = None  # index into the data set; None: the first diagnosed pair


# -- checkpoints ------------------------------------------------------------------------------


def run_config_of(checkpoint: str) -> tuple[dict, str | None]:
    """The training run's config (`<run>/config.yaml`, JSON) of a `<run>/<method>/checkpoint`."""
    ckpt = Path(checkpoint)
    for path in (ckpt.parent.parent / "config.yaml", ckpt.parent / "config.yaml"):
        if path.is_file():
            import yaml

            return yaml.safe_load(path.read_text()) or {}, str(path)
    return {}, None


def default_label(checkpoint: str) -> str:
    ckpt = Path(checkpoint.rstrip("/"))
    if ckpt.name == "checkpoint" and ckpt.parent.name:
        return f"{ckpt.parent.parent.name}/{ckpt.parent.name}"
    return ckpt.name or checkpoint


def default_output_dir(checkpoint: str) -> Path:
    ckpt = Path(checkpoint.rstrip("/"))
    if ckpt.name == "checkpoint" and ckpt.is_dir():
        return ckpt.parent / "eval"
    return Path("eval") / (ckpt.name or "model")


def checkpoint_render(checkpoint: str, run_cfg: dict) -> dict:
    """How the checkpoint's student read its text: the `render` its metadata records (DESIGN.md
    decision 9), else the run's config.yaml (older checkpoints). `template` is what
    `encode_pairs` takes: "chat", a (prefix, separator, suffix) tuple, or None."""
    from idrm_ray.core.reward_model import read_metadata

    saved = read_metadata(checkpoint).get("render")
    student = run_cfg.get("student", {})
    source = saved if saved is not None else {
        "chat_template": student.get("chat_template", False),
        "template": [(student.get("template") or {}).get(k, "") for k in ("prefix", "separator", "suffix")],
        "max_len": student.get("max_len"),
    }
    parts = tuple(source.get("template") or ("", "", ""))
    template = "chat" if source.get("chat_template") else (parts if any(parts) else None)
    return {"template": template, "max_len": source.get("max_len"), "chat_template": bool(source.get("chat_template")),
            "recorded": saved is not None}


class LoadedModel:
    """A checkpoint with its tokenizer and its encoding settings."""

    def __init__(self, checkpoint: str, opts: EvalOptions) -> None:
        from idrm_ray.core.reward_model import load_student_tokenizer

        cfg, self.config_path = run_config_of(checkpoint)
        render = checkpoint_render(checkpoint, cfg)
        self.checkpoint = checkpoint
        self.max_len = int(opts.max_len or render["max_len"] or DEFAULT_MAX_LEN)
        if opts.template is not None and render["recorded"] and (opts.template == "chat") != render["chat_template"]:
            trained = "chat-templated text" if render["chat_template"] else "raw prompt + response"
            raise EvalError(f"{checkpoint} was trained on {trained} (its metadata records it): --template "
                            f"{opts.template!r} would score text it never saw; drop --template")
        self.template = opts.template if opts.template is not None else render["template"]
        self.opts = opts
        try:  # a path that is not a model is bad input, not a crash
            self.tokenizer = load_student_tokenizer(checkpoint)
            self.scorer: RewardScorer | None = None if opts.use_ray else self.local_scorer()
        except (OSError, ValueError) as exc:
            raise EvalError(f"cannot load checkpoint {checkpoint}: {type(exc).__name__}: {exc}") from exc

    def local_scorer(self) -> RewardScorer:
        """The in-process scorer (sdpa); with --ray one is made for the diagnostics only."""
        o = self.opts
        return RewardScorer(self.checkpoint, device=o.device, dtype=o.dtype, batch_size=o.batch_size)

    def encode(self, evals: EvalSet | CompletionSet) -> tuple[list[np.ndarray], dict[str, int]]:
        """Pairs: [chosen_0, rejected_0, ...]; a CompletionSet: every completion in order."""
        if isinstance(evals, CompletionSet):
            return encode_completions(evals, self.tokenizer, max_len=self.max_len, template=self.template)
        return encode_with_stats(evals.examples, self.tokenizer, max_len=self.max_len, template=self.template)

    def score(self, seqs: list[np.ndarray]) -> np.ndarray:
        if self.scorer is not None:
            return self.scorer.score(seqs)
        from idrm_ray.eval.ray_scoring import score_with_ray

        o = self.opts
        return score_with_ray(
            self.checkpoint,
            seqs,
            batch_size=o.batch_size,
            concurrency=o.ray_concurrency,
            num_gpus=o.ray_gpus,
            dtype=o.dtype,
        )

    def settings(self) -> dict:
        return {
            "checkpoint": self.checkpoint,
            "max_len": self.max_len,
            "template": self.template,
            "run_config": self.config_path,
        }
