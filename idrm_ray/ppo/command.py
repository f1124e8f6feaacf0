"""Our PPO config -> OpenRLHF 0.11's dotted-flag `train_ppo_ray` command (a pure function).

Three reward routes:
- `reward.checkpoint`: OpenRLHF loads our checkpoint in-cluster (`--reward.model_name_or_path`);
- `reward.url`, no token, no PAR: OpenRLHF's own HTTP client posts to the server
  (`--reward.remote_url URL`);
- `reward.url` with PAR or a token: `--reward.remote_url idrm_par_reward.py`, our
  `reward_func` file staged into the job's working_dir, configured by environment
  (OpenRLHF's HTTP client sends no auth header, so a token needs the file too).
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from idrm_ray.config.ppo import PPOJobConfig

__all__ = ["PPO_MODULE", "PPOLaunch", "REWARD_FUNC_NAME", "REFERENCES_NAME", "build_ppo_launch"]

PPO_MODULE = "openrlhf.cli.train_ppo_ray"
REWARD_FUNC_NAME = "idrm_par_reward.py"
REFERENCES_NAME = "idrm_par_references.jsonl"
SECRET = "IDRM_REWARD_TOKEN"


@dataclass(frozen=True)
class PPOLaunch:
    argv: list[str]  # the whole command, interpreter first
    env_vars: dict[str, str] = field(default_factory=dict)  # the job's environment
    files: dict[str, str] = field(default_factory=dict)  # staged name -> local source path

    @property
    def flags(self) -> list[str]:
        """What OpenRLHF's parser reads (after `python -m openrlhf.cli.train_ppo_ray`)."""
        return self.argv[3:]

    @property
    def entrypoint(self) -> str:
        return shlex.join(self.argv)

    def display(self) -> str:
        """The command as a copy-pastable shell line, secrets masked."""
        env = " ".join(f"{k}={'***' if k == SECRET else shlex.quote(v)}" for k, v in sorted(self.env_vars.items()))
        lines = [f"{env} \\" if env else "", self.entrypoint.replace(" --", " \\\n    --")]
        if self.files:
            staged = ", ".join(f"{name} <- {path}" for name, path in self.files.items())
            lines.append(f"# staged into the job's working_dir: {staged}")
        return "\n".join(line for line in lines if line)


def _f(name: str, value) -> list[str]:
    return [f"--{name}", str(value)]


def _switch(name: str, on: bool) -> list[str]:
    return [f"--{name}"] if on else []


def _reward_flags(cfg: PPOJobConfig, token: str | None) -> tuple[list[str], dict[str, str], dict[str, str]]:
    r, par, pl = cfg.reward, cfg.par, cfg.placement
    flags: list[str] = []
    env: dict[str, str] = {}
    files: dict[str, str] = {}
    if r.checkpoint:
        flags += _f("reward.model_name_or_path", r.checkpoint) + _switch("reward.normalize_enable", r.normalize)
        flags += _f("reward.num_nodes", pl.reward_nodes) + _f("reward.num_gpus_per_node", pl.reward_gpus_per_node)
    elif par.enabled or token or r.token_file:
        from idrm_ray.serve import par_reward

        files[REWARD_FUNC_NAME] = par_reward.__file__
        flags += _f("reward.remote_url", REWARD_FUNC_NAME)
        env[par_reward.ENV_URL] = r.url
        if token:
            env[par_reward.ENV_TOKEN] = token
        if r.token_file:
            env[par_reward.ENV_TOKEN_FILE] = r.token_file
        if par.enabled:
            refs = par.references
            if Path(refs).expanduser().is_file():  # local: ship it; else a path on the cluster
                files[REFERENCES_NAME] = str(Path(refs).expanduser().resolve())
                refs = REFERENCES_NAME
            env |= {par_reward.ENV_REFERENCES: refs, par_reward.ENV_MISSING: par.missing}
            if par.ref_suffix:
                env[par_reward.ENV_REF_SUFFIX] = par.ref_suffix
    else:
        flags += _f("reward.remote_url", r.url)
    flags += ["--reward.clip_range", str(r.clip[0]), str(r.clip[1])]
    return flags, env, files


def build_ppo_launch(cfg: PPOJobConfig, *, token: str | None = None) -> PPOLaunch:
    """The full command plus the job environment and files it needs. `token`: the reward
    server's bearer token, resolved by the caller from `reward.token_env`."""
    p, pl, v, d, t = cfg.policy, cfg.placement, cfg.vllm, cfg.data, cfg.train
    flags = _f("actor.model_name_or_path", p.model_name_or_path) + _f("actor.adam.lr", p.lr)
    flags += _switch("actor.gradient_checkpointing_enable", p.gradient_checkpointing)
    reward_flags, env, files = _reward_flags(cfg, token)
    flags += reward_flags
    flags += _f("actor.num_nodes", pl.actor_nodes) + _f("actor.num_gpus_per_node", pl.actor_gpus_per_node)
    flags += _f("ref.num_nodes", pl.ref_nodes) + _f("ref.num_gpus_per_node", pl.ref_gpus_per_node)
    if t.advantage_estimator == "gae":  # only GAE trains a critic
        flags += _f("critic.num_nodes", pl.critic_nodes) + _f("critic.num_gpus_per_node", pl.critic_gpus_per_node)
        flags += _f("critic.adam.lr", t.critic_lr)
    flags += _switch("train.colocate_all", pl.colocate_all)
    flags += _f("vllm.num_engines", v.num_engines) + _f("vllm.tensor_parallel_size", v.tensor_parallel_size)
    flags += _f("vllm.gpu_memory_utilization", v.gpu_memory_utilization) + _switch("vllm.enable_sleep", v.enable_sleep)
    flags += _f("data.prompt_dataset", d.prompt_dataset) + _f("data.input_key", d.input_key)
    flags += _f("data.label_key", d.label_key) if d.label_key else []
    flags += _switch("data.apply_chat_template", d.apply_chat_template)
    flags += _f("data.max_samples", d.max_samples) if d.max_samples is not None else []
    flags += _f("data.max_len", d.max_len) + _f("rollout.max_new_tokens", d.max_new_tokens)
    flags += _f("algo.advantage.estimator", t.advantage_estimator)
    flags += _f("rollout.n_samples_per_prompt", t.n_samples_per_prompt) + _f("rollout.batch_size", t.rollout_batch_size)
    flags += _f("rollout.micro_batch_size", t.micro_rollout_batch_size)
    flags += _f("train.batch_size", t.train_batch_size) + _f("train.micro_batch_size", t.micro_train_batch_size)
    flags += _f("train.max_epochs", t.max_epochs) + _f("train.num_episodes", t.num_episodes)
    flags += _f("algo.kl.init_coef", t.init_kl_coef) + _f("ds.zero_stage", t.zero_stage)
    flags += _f("ds.param_dtype", t.param_dtype) + _f("ds.attn_implementation", t.attn_implementation)
    flags += _f("train.seed", t.seed) + _f("ckpt.output_dir", t.save_path) + _f("ckpt.save_steps", t.save_steps)
    flags += list(cfg.extra_args)
    env |= dict(cfg.submit.env_vars)
    return PPOLaunch(argv=[cfg.submit.python, "-m", PPO_MODULE, *flags], env_vars=env, files=files)
