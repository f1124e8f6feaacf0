"""The config tree of the reward server (`idrm-ray serve`, `serve/`).

Defaults are the safe local ones: loopback only, no token (so nothing beyond this machine
can call it), bounded requests, one CPU replica. Checks here are for values that cannot
work; the token itself never lives in a config, only the name of the environment variable
holding it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from idrm_ray.configtree.base import param, require, section

Dtype = Literal["auto", "bf16", "fp16", "fp32"]


@dataclass(frozen=True)
class ServeModelConfig:
    """The reward checkpoint served, and how a query becomes token ids (as in training)."""

    checkpoint: str = param("", "Saved reward model directory (a run's model/ folder); `--checkpoint DIR`.")
    dtype: Dtype = param("auto", "Weights dtype; auto: bf16 on GPU, fp32 on CPU.")
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = param("sdpa", "Attention kernel.")
    max_len: int = param(
        2048, "Max tokens of a query; longer ones are cut as in training (prompt from the left, response "
              "from the right, BOS/EOS kept).")
    batch_size: int = param(16, "Sequences per forward pass (memory bound; dynamic batching gathers more).")
    normalize: bool = param(False, "Return (r - mean) / std with the checkpoint's stored mean/std.")
    special_tokens: Literal["auto", "always", "never"] = param(
        "auto", "Prepend the tokenizer's leading specials (BOS) as training did; auto: unless the text starts "
                "with them already (chat templates often include BOS).")
    append_eos: bool = param(True, "Append EOS unless the text ends with it (the reward is read at EOS).")

    def __post_init__(self):
        require(self, self.max_len >= 8, "max_len", "must be >= 8 tokens")
        require(self, self.batch_size >= 1, "batch_size", "must be >= 1")


@dataclass(frozen=True)
class ServerConfig:
    """HTTP endpoint: OpenRLHF's remote reward protocol on `POST /get_reward`, `GET /health`."""

    host: str = param("127.0.0.1", "Bind address; anything but loopback needs a token (loud warning otherwise).")
    port: int = param(5000, "TCP port (OpenRLHF's serve_rm default).")
    backend: Literal["ray", "plain"] = param(
        "ray", "ray: Ray Serve deployment (replicas, dynamic batching); plain: one uvicorn process, no Ray.")
    token_env: str = param(
        "", "Environment variable holding the bearer token; empty: no auth. Set but empty/unset is an error.")
    max_body_bytes: int = param(1 << 20, "Largest request body accepted (413 above).")
    max_batch: int = param(64, "Most queries in one request (413 above); OpenRLHF sends one per rollout.")
    max_query_chars: int = param(200_000, "Longest query string accepted, in characters (413 above).")
    ray_address: str = param("", "Ray cluster to join (`auto`, ray://...); empty: start Ray in process.")
    app_name: str = param("idrm_reward", "Ray Serve application name.")
    ready_timeout_s: float = param(300.0, "Give up when the server is not healthy after this long.")

    def __post_init__(self):
        require(self, bool(self.host.strip()), "host", "give an address, e.g. 127.0.0.1")
        require(self, 1 <= self.port <= 65535, "port", "must be in 1..65535")
        require(self, self.max_body_bytes >= 1024, "max_body_bytes", "must be >= 1024")
        require(self, self.max_batch >= 1, "max_batch", "must be >= 1")
        require(self, self.max_query_chars >= 1, "max_query_chars", "must be >= 1")
        require(self, self.ready_timeout_s > 0, "ready_timeout_s", "must be > 0")


@dataclass(frozen=True)
class DeploymentConfig:
    """Ray Serve: replicas, resources per replica and dynamic batching (`@serve.batch`)."""

    num_replicas: int = param(1, "Replicas of the reward model (each loads the checkpoint).")
    num_cpus: float = param(1.0, "CPUs per replica.")
    num_gpus: float = param(0.0, "GPUs per replica (0: CPU; a fraction shares a GPU).")
    resources: dict[str, float] = field(default_factory=dict, metadata={"help": "Custom resources per replica."})
    max_batch_size: int = param(64, "Queries gathered from concurrent requests into one scoring call.")
    batch_wait_timeout_s: float = param(0.005, "How long a batch waits to fill after its first request.")
    max_ongoing_requests: int = param(128, "Requests in flight per replica before Serve queues them.")

    def __post_init__(self):
        require(self, self.num_replicas >= 1, "num_replicas", "must be >= 1")
        require(self, self.num_cpus >= 0 and self.num_gpus >= 0, "num_cpus", "resources must be >= 0")
        require(self, self.max_batch_size >= 1, "max_batch_size", "must be >= 1")
        require(self, self.batch_wait_timeout_s >= 0, "batch_wait_timeout_s", "must be >= 0")
        require(self, self.max_ongoing_requests >= 1, "max_ongoing_requests", "must be >= 1")


@dataclass(frozen=True)
class ServeJobConfig:
    """Everything `idrm-ray serve` needs."""

    job: Literal["serve"] = param("serve", "Which job this tree configures.")
    model: ServeModelConfig = section(ServeModelConfig)
    server: ServerConfig = section(ServerConfig)
    deployment: DeploymentConfig = section(DeploymentConfig)

    def __post_init__(self):
        # One request must fit in one dynamic batch, or Serve could never schedule it.
        require(self, self.server.max_batch <= self.deployment.max_batch_size, "server.max_batch",
                f"must be <= deployment.max_batch_size ({self.deployment.max_batch_size})")
