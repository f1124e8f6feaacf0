"""`idrm-ray ppo` / `jobs/ppo.py`: check, print (`--dry-run`) or submit OpenRLHF PPO as a Ray job.

    idrm-ray ppo --config ppo.yaml --dry-run
    idrm-ray ppo policy.model_name_or_path=/m/sft reward.checkpoint=runs/x/model \
        data.prompt_dataset=/d/prompts.jsonl submit.address=http://head:8265

PPO itself needs vLLM and flash-attn on CUDA nodes; this side only needs OpenRLHF's
Python code to check the command (`openrlhf_cli.py`).
"""
from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from idrm_ray.ppo.checks import check_render, check_tokenizers_match
from idrm_ray.ppo.command import PPOLaunch, build_ppo_launch
from idrm_ray.config.ppo import PPOJobConfig
from idrm_ray.ppo.openrlhf_cli import FlagError, OpenRLHFMissing, check_ppo_flags
from idrm_ray.serve.checkpoint_check import CheckError, check_reward_checkpoint, is_local

__all__ = ["CheckError", "FlagError", "OpenRLHFMissing", "preflight", "run_ppo", "submit_launch"]


def _required(cfg: PPOJobConfig) -> None:
    missing = [k for k, v in (("policy.model_name_or_path", cfg.policy.model_name_or_path),
                              ("data.prompt_dataset", cfg.data.prompt_dataset)) if not v]
    if not (cfg.reward.checkpoint or cfg.reward.url):
        missing.append("reward.checkpoint or reward.url")
    if missing:
        raise CheckError(f"missing {', '.join(missing)}: set them in the YAML or as key=value overrides")


def _resolve_token(cfg: PPOJobConfig) -> str | None:
    name = cfg.reward.token_env
    if not name:
        return None
    token = os.environ.get(name, "").strip()
    if not token:
        raise CheckError(f"reward.token_env names ${name}, but it is unset or empty here")
    return token


def _probe_server(url: str, token: str | None) -> str:
    health = url.rsplit("/", 1)[0] + "/health"
    req = urllib.request.Request(health, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=3) as resp:
            return f"reward server answers at {health} ({resp.status})"
    except (urllib.error.URLError, OSError) as exc:
        return f"reward server not reachable from here at {health} ({exc}); fine if only the cluster reaches it"


def preflight(cfg: PPOJobConfig, *, require_openrlhf: bool) -> tuple[PPOLaunch, list[str]]:
    """Every check that can run before launch; returns the launch and notes. Raises
    `CheckError` (or `FlagError` / `OpenRLHFMissing`) with one clear line."""
    _required(cfg)
    token = _resolve_token(cfg)
    notes: list[str] = []
    r = cfg.reward
    if r.checkpoint:
        if is_local(r.checkpoint):
            info = check_reward_checkpoint(r.checkpoint)
            notes.append(f"reward checkpoint ok: {info.num_tensors} tensors, head `{info.value_head_prefix}` "
                         f"[1, {info.hidden_size}], mean {info.mean:.4g}, std {info.std:.4g}")
            note = check_tokenizers_match(r.checkpoint, cfg.policy.model_name_or_path)
            notes.append(note or "reward tokenizer == policy tokenizer")
            notes.append(check_render(r.checkpoint, apply_chat_template=cfg.data.apply_chat_template))
        else:
            notes.append(f"reward checkpoint {r.checkpoint} is not local: layout and tokenizer not checked")
    else:
        notes.append(_probe_server(r.url, token))
    if cfg.par.enabled and is_local(cfg.par.references):
        from idrm_ray.serve.par_reward import read_references

        try:
            refs = read_references(cfg.par.references)
        except ValueError as exc:
            raise CheckError(f"par.references: {exc}") from None
        scored = sum(row["ref_rewards"] is not None for row in refs.values())
        notes.append(f"PAR references: {len(refs)} prompts, {scored} with precomputed ref_rewards")
    launch = build_ppo_launch(cfg, token=token)
    try:
        check = check_ppo_flags(launch.flags)
        notes.append(f"flags accepted by the installed OpenRLHF train_ppo_ray parser ({len(launch.flags)} args)")
        notes += [f"OpenRLHF says: {w}" for w in check.warnings]
    except OpenRLHFMissing as exc:
        if require_openrlhf:
            raise
        notes.append(f"flags NOT checked: {exc}")
    return launch, notes


def submit_launch(launch: PPOLaunch, *, address: str, submission_id: str = "", client_factory=None) -> str:
    """Stage the files into a temporary working_dir and submit; returns the job id."""
    if client_factory is None:
        from ray.job_submission import JobSubmissionClient as client_factory
    client = client_factory(address or None)
    with tempfile.TemporaryDirectory(prefix="idrm_ppo_") as staging:
        runtime_env: dict = {"env_vars": dict(launch.env_vars)}
        if launch.files:
            for name, src in launch.files.items():
                shutil.copyfile(src, Path(staging) / name)
            runtime_env["working_dir"] = staging  # uploaded by submit_job, so the temp dir may go
        return client.submit_job(entrypoint=launch.entrypoint, runtime_env=runtime_env,
                                 submission_id=submission_id or None)


async def _follow(client, job_id: str, out: Callable[[str], None]) -> None:
    async for lines in client.tail_job_logs(job_id):
        out(lines.rstrip("\n"))


def run_ppo(cfg: PPOJobConfig, *, dry_run: bool = False, out: Callable[[str], None] = print) -> int:
    launch, notes = preflight(cfg, require_openrlhf=not dry_run)
    for note in notes:
        out(f"check: {note}")
    if dry_run:
        out(launch.display())
        return 0
    job_id = submit_launch(launch, address=cfg.submit.address, submission_id=cfg.submit.submission_id)
    address = cfg.submit.address or os.environ.get("RAY_ADDRESS", "") or "<local>"
    out(f"submitted Ray job {job_id} to {address}; follow: ray job logs -f {job_id}"
        + (f" --address {cfg.submit.address}" if cfg.submit.address else ""))
    if cfg.submit.wait:
        from ray.job_submission import JobSubmissionClient

        asyncio.run(_follow(JobSubmissionClient(cfg.submit.address or None), job_id, out))
    return 0

