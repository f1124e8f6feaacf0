"""The Ray Serve wrapper around `RewardService` + `RewardScorer` (thin on purpose).

Each replica loads the checkpoint once and serves the same FastAPI app as the plain backend
(`app.build_app`), built on the replica by an ingress builder function: FastAPI 0.165 apps
hold a lock and cannot be pickled into the deployment, and a builder takes no arguments,
so it finds its replica through a module global (one replica per actor process).
Queries are tokenized per request, then `@serve.batch` gathers the encoded rows
of concurrent requests (up to `deployment.max_batch_size` queries, waiting at most
`batch_wait_timeout_s`) into one scoring call run in a worker thread. Replicas, CPUs,
GPUs and custom resources come from `DeploymentConfig`.

The bearer token is resolved on the driver; replicas get only its SHA-256 digest, as the
deployment's `user_config`, so a token is rotated (or auth turned on/off) by redeploying
with a new `user_config`: Serve calls `reconfigure` on the live replicas, no reload.
"""
from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass

from ray import serve

from idrm_ray.serve.app import RewardService, build_app
from idrm_ray.config.serve import ServeJobConfig
from idrm_ray.serve.protocol import Limits, RewardRequest, token_digest
from idrm_ray.serve.scoring import RewardScorer, Scores

__all__ = ["DEPLOYMENT_NAME", "ReplicaSettings", "RewardDeployment", "RewardReplica", "auth_user_config",
           "build_application", "replica_settings"]

DEPLOYMENT_NAME = "RewardModel"
_CLOSED = b"\x00" * 32  # no token hashes to this: every request is refused until reconfigured
_REPLICA: "RewardReplica | None" = None  # this process's replica, for the ingress builder


def _replica_app():
    if _REPLICA is None:
        raise RuntimeError("the reward replica's app was built before the replica itself")
    return build_app(_REPLICA.service)


@dataclass(frozen=True)
class ReplicaSettings:
    """What a replica needs, as plain values (pickled into the deployment)."""

    checkpoint: str
    dtype: str
    attn_implementation: str
    use_gpu: bool
    max_len: int
    batch_size: int
    normalize_rewards: bool
    special_tokens: str
    append_eos: bool
    limits: Limits
    max_batch_size: int
    batch_wait_timeout_s: float


def replica_settings(cfg: ServeJobConfig) -> ReplicaSettings:
    m, s, d = cfg.model, cfg.server, cfg.deployment
    return ReplicaSettings(
        checkpoint=m.checkpoint, dtype=m.dtype, attn_implementation=m.attn_implementation, use_gpu=d.num_gpus > 0,
        max_len=m.max_len, batch_size=m.batch_size, normalize_rewards=m.normalize, special_tokens=m.special_tokens,
        append_eos=m.append_eos,
        limits=Limits(max_body_bytes=s.max_body_bytes, max_batch=s.max_batch, max_query_chars=s.max_query_chars),
        max_batch_size=d.max_batch_size, batch_wait_timeout_s=d.batch_wait_timeout_s,
    )


def _num_queries(groups: list[list[list[int]]]) -> int:
    return sum(len(rows) for rows in groups)


class RewardReplica:
    """One replica: the scorer, the shared service, and the `@serve.batch` method.

    Kept importable under its own name (the deployment wraps it below), so Ray pickles
    it by reference and `_REPLICA` is set in this module, where the builder reads it."""

    def __init__(self, settings: ReplicaSettings):
        global _REPLICA
        self.scorer = RewardScorer.from_checkpoint(
            settings.checkpoint, dtype=settings.dtype, use_gpu=settings.use_gpu,
            attn_implementation=settings.attn_implementation, max_len=settings.max_len,
            batch_size=settings.batch_size, normalize_rewards=settings.normalize_rewards,
            special_tokens=settings.special_tokens, append_eos=settings.append_eos,
        )
        replica = serve.get_replica_context().replica_id.unique_id
        info = {"checkpoint": settings.checkpoint, "backend": "ray", "replica": replica, **self.scorer.info()}
        # Auth stays closed until `reconfigure` has run (Serve calls it before any traffic).
        self.service = RewardService(self._score, limits=settings.limits, token_digest=_CLOSED, info=info)
        self.score_batch.set_max_batch_size(settings.max_batch_size)
        self.score_batch.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)
        _REPLICA = self  # Serve calls the ingress builder right after this constructor

    def reconfigure(self, user_config: dict) -> None:
        digest = user_config.get("token_sha256")
        self.service.digest = bytes.fromhex(digest) if digest else None

    async def _score(self, req: RewardRequest) -> Scores:
        rows = self.scorer.encode(req.queries, req.prompts)  # per request: a bad query fails alone
        return await self.score_batch(rows)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005, batch_size_fn=_num_queries)
    async def score_batch(self, groups: list[list[list[int]]]) -> list[Scores]:
        return await asyncio.to_thread(self.scorer.score_many, groups)


RewardDeployment = serve.deployment(name=DEPLOYMENT_NAME)(serve.ingress(_replica_app)(RewardReplica))


def auth_user_config(token: str | None) -> dict:
    """The deployment's `user_config`: the token's SHA-256 (hex), or None for no auth."""
    return {"token_sha256": token_digest(token).hex() if token else None}


def build_application(cfg: ServeJobConfig, token: str | None):
    """The bound application for `serve.run`."""
    d = cfg.deployment
    actor_options = {"num_cpus": d.num_cpus, "num_gpus": d.num_gpus}
    if d.resources:
        actor_options["resources"] = dict(d.resources)
    settings = replica_settings(cfg)
    # A version fixed by the settings: redeploying with only a new token (user_config) is then
    # a lightweight `reconfigure` of the live replicas, not a restart.
    version = hashlib.sha256(repr((settings, actor_options)).encode()).hexdigest()[:16]
    return RewardDeployment.options(
        num_replicas=d.num_replicas, max_ongoing_requests=d.max_ongoing_requests, ray_actor_options=actor_options,
        user_config=auth_user_config(token), version=version,
    ).bind(settings)

