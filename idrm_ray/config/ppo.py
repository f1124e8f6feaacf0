"""The config tree of the PPO job (`idrm-ray ppo`, `ppo/`): what we pass to OpenRLHF.

A deliberately small subset of OpenRLHF 0.11's ~170 `train_ppo_ray` flags (the ones this
project decides: policy, reward source, PAR, placement, vLLM, data, the main PPO
numbers); anything else goes through `extra_args` verbatim and is checked against the
installed OpenRLHF's parser like the rest. Defaults are OpenRLHF's Llama-3-8B PPO example
scaled to one 8-GPU node.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from idrm_ray.configtree.base import param, require, section


@dataclass(frozen=True)
class PolicyConfig:
    """The policy (OpenRLHF actor; also the frozen reference, and the critic's init with a remote RM)."""

    model_name_or_path: str = param("", "Hub id or directory of the SFT policy.")
    lr: float = param(5e-7, "--actor.adam.lr")
    gradient_checkpointing: bool = param(True, "--actor.gradient_checkpointing_enable")


@dataclass(frozen=True)
class RewardSourceConfig:
    """Where rewards come from: an in-cluster checkpoint or the reward server (one, checked at launch)."""

    checkpoint: str = param(
        "", "Our saved reward model, loaded by OpenRLHF in-cluster (--reward.model_name_or_path). It receives "
            "the policy's token ids, so it must share the policy's tokenizer (checked before launch).")
    url: str = param("", "The reward server's http(s)://host:port/get_reward (`idrm-ray serve`).")
    token_env: str = param(
        "", "Environment variable, on the submitting machine, with the server's bearer token; it reaches the "
            "cluster as a job env var (visible to dashboard users; prefer token_file).")
    token_file: str = param("", "Path, on the cluster nodes, of a file holding the server's bearer token.")
    normalize: bool = param(False, "--reward.normalize_enable: OpenRLHF applies the checkpoint's mean/std.")
    clip: tuple[float, float] = param((-10.0, 10.0), "--reward.clip_range")

    def __post_init__(self):
        require(self, not (self.checkpoint and self.url), "url",
                "set only one of reward.checkpoint (in-cluster) and reward.url (the reward server)")
        require(self, not self.url or self.url.startswith(("http://", "https://")), "url",
                "must be an http(s):// URL ending in /get_reward")
        require(self, not (self.checkpoint and (self.token_env or self.token_file)), "token_env",
                "a token is for the reward server (reward.url), not an in-cluster checkpoint")
        require(self, self.clip[0] < self.clip[1], "clip", "needs low < high")


@dataclass(frozen=True)
class PARConfig:
    """PAR reward shaping (METHOD.md §10) through `idrm_ray/serve/par_reward.py`; needs reward.url."""

    enabled: bool = param(False, "Shape rewards as mean_k sigmoid(r(x,y) - r(x,y_ref_k)).")
    references: str = param(
        "", "JSONL with prompt, references[, ref_rewards] (precompute: idrm-ray serve --score-references).")
    missing: Literal["error", "neutral"] = param("error", "A prompt without references: fail, or reward 0.5.")
    ref_suffix: str = param("", "Appended to prompt + reference when references are scored during PPO.")


@dataclass(frozen=True)
class PlacementConfig:
    """GPUs per role (OpenRLHF Ray actors) and colocation."""

    actor_nodes: int = param(1, "--actor.num_nodes")
    actor_gpus_per_node: int = param(8, "--actor.num_gpus_per_node")
    ref_nodes: int = param(1, "--ref.num_nodes")
    ref_gpus_per_node: int = param(8, "--ref.num_gpus_per_node")
    critic_nodes: int = param(1, "--critic.num_nodes")
    critic_gpus_per_node: int = param(8, "--critic.num_gpus_per_node")
    reward_nodes: int = param(1, "--reward.num_nodes (in-cluster reward model only)")
    reward_gpus_per_node: int = param(8, "--reward.num_gpus_per_node (in-cluster reward model only)")
    colocate_all: bool = param(True, "--train.colocate_all: every model and vLLM share the same GPUs.")

    def __post_init__(self):
        for key in ("actor_nodes", "actor_gpus_per_node", "ref_nodes", "ref_gpus_per_node", "critic_nodes",
                    "critic_gpus_per_node", "reward_nodes", "reward_gpus_per_node"):
            require(self, getattr(self, key) >= 1, key, "must be >= 1")


@dataclass(frozen=True)
class VLLMConfig:
    """vLLM rollout engines (OpenRLHF needs them: no HF-generate path since 0.8)."""

    num_engines: int = param(8, "--vllm.num_engines")
    tensor_parallel_size: int = param(1, "--vllm.tensor_parallel_size")
    gpu_memory_utilization: float = param(0.5, "--vllm.gpu_memory_utilization")
    enable_sleep: bool = param(True, "--vllm.enable_sleep (only with placement.colocate_all)")

    def __post_init__(self):
        require(self, self.num_engines >= 1, "num_engines", "PPO in OpenRLHF needs at least one vLLM engine")
        require(self, self.tensor_parallel_size >= 1, "tensor_parallel_size", "must be >= 1")
        require(self, 0 < self.gpu_memory_utilization <= 1, "gpu_memory_utilization", "must be in (0, 1]")


@dataclass(frozen=True)
class PPODataConfig:
    """Prompts for rollouts."""

    prompt_dataset: str = param("", "--data.prompt_dataset: HF id or local path.")
    input_key: str = param("input", "--data.input_key")
    label_key: str = param("", "--data.label_key (empty: none)")
    apply_chat_template: bool = param(True, "--data.apply_chat_template")
    max_samples: int | None = param(None, "--data.max_samples (null: all)")
    max_len: int = param(2048, "--data.max_len: prompt + response tokens.")
    max_new_tokens: int = param(1024, "--rollout.max_new_tokens")


@dataclass(frozen=True)
class PPOTrainConfig:
    """The main PPO numbers (OpenRLHF flag in each help)."""

    advantage_estimator: Literal["gae", "reinforce", "rloo", "reinforce_baseline", "group_norm", "dr_grpo"] = param(
        "gae", "--algo.advantage.estimator")
    n_samples_per_prompt: int = param(1, "--rollout.n_samples_per_prompt")
    rollout_batch_size: int = param(1024, "--rollout.batch_size")
    micro_rollout_batch_size: int = param(16, "--rollout.micro_batch_size")
    train_batch_size: int = param(128, "--train.batch_size")
    micro_train_batch_size: int = param(8, "--train.micro_batch_size")
    max_epochs: int = param(1, "--train.max_epochs")
    num_episodes: int = param(1, "--train.num_episodes")
    critic_lr: float = param(9e-6, "--critic.adam.lr")
    init_kl_coef: float = param(0.01, "--algo.kl.init_coef")
    zero_stage: Literal[0, 1, 2, 3] = param(3, "--ds.zero_stage")
    param_dtype: Literal["bf16", "fp16"] = param("bf16", "--ds.param_dtype")
    attn_implementation: str = param("flash_attention_2", "--ds.attn_implementation")
    seed: int = param(42, "--train.seed")
    save_path: str = param("./ckpt/ppo", "--ckpt.output_dir (final HF model)")
    save_steps: int = param(-1, "--ckpt.save_steps (-1: only at the end)")

    def __post_init__(self):
        for key in ("n_samples_per_prompt", "rollout_batch_size", "micro_rollout_batch_size", "train_batch_size",
                    "micro_train_batch_size", "max_epochs", "num_episodes"):
            require(self, getattr(self, key) >= 1, key, "must be >= 1")


@dataclass(frozen=True)
class SubmitConfig:
    """How the command reaches the cluster: a Ray job (`ray.job_submission`)."""

    address: str = param("", "Ray dashboard address, http://<head>:8265; empty: $RAY_ADDRESS, else local.")
    submission_id: str = param("", "Job id (empty: Ray picks one).")
    python: str = param("python", "Interpreter on the cluster that has OpenRLHF installed.")
    env_vars: dict[str, str] = field(default_factory=dict, metadata={"help": "Extra job environment variables."})
    wait: bool = param(False, "Follow the job's logs until it ends.")


@dataclass(frozen=True)
class PPOJobConfig:
    """Everything `idrm-ray ppo` needs."""

    job: Literal["ppo"] = param("ppo", "Which job this tree configures.")
    policy: PolicyConfig = section(PolicyConfig)
    reward: RewardSourceConfig = section(RewardSourceConfig, "Where rewards come from (one of checkpoint / url).")
    par: PARConfig = section(PARConfig)
    placement: PlacementConfig = section(PlacementConfig)
    vllm: VLLMConfig = section(VLLMConfig)
    data: PPODataConfig = section(PPODataConfig)
    train: PPOTrainConfig = section(PPOTrainConfig)
    submit: SubmitConfig = section(SubmitConfig)
    extra_args: list[str] = field(default_factory=list, metadata={
        "help": "More OpenRLHF flags, verbatim (checked by its parser), e.g. [--logger.wandb.key, KEY]."})

    def __post_init__(self):
        require(self, not self.par.enabled or bool(self.reward.url), "par.enabled",
                "PAR shapes the reward server's answers: set reward.url (an in-cluster RM cannot be shaped)")
        require(self, not self.par.enabled or bool(self.par.references), "par.references",
                "PAR needs reference responses: a JSONL of prompt, references[, ref_rewards]")
        require(self, not self.vllm.enable_sleep or self.placement.colocate_all, "vllm.enable_sleep",
                "vLLM sleep needs placement.colocate_all=true")
        # OpenRLHF 0.11.2 keeps mean/std in non-persistent buffers; transformers 5 loads on the
        # meta device (every stage but ZeRO-3) and leaves such buffers uninitialised (seen on
        # CPU: std ~1e35), so --reward.normalize_enable would scale rewards by garbage.
        require(self, not (self.reward.checkpoint and self.reward.normalize) or self.train.zero_stage == 3,
                "reward.normalize",
                "in-cluster normalisation needs train.zero_stage=3 (OpenRLHF + transformers 5 lose the stored "
                "mean/std otherwise); or serve the RM with model.normalize=true and set reward.url")
