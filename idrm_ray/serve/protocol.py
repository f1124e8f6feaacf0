"""OpenRLHF's remote reward protocol: request limits, validation, response (pure python).

OpenRLHF 0.11 (`openrlhf/utils/agent.py`, `SingleTurnAgentExecutor._fetch_rewards_via_http`)
POSTs `{"query": [...], "prompts": [...], "labels": [...]}` (one rollout per request in
practice), raises on any non-2xx status, and reads `rewards`, then `scores` (falling back to
`rewards`) and `extra_logs` (a dict of per-query lists, logged as metrics).

Every refusal is a `RequestError` with an HTTP status and one line saying what to fix:
401 auth, 400 not JSON, 413 too large, 422 wrong shape or types.
"""
from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Limits", "RequestError", "RewardRequest", "check_bearer", "parse_reward_request", "reward_response",
           "token_digest"]


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 1 << 20
    max_batch: int = 64
    max_query_chars: int = 200_000


@dataclass(frozen=True)
class RewardRequest:
    queries: list[str]  # full prompt + response texts, as OpenRLHF decodes them
    prompts: list[str] | None
    labels: list[Any] | None  # passed through by OpenRLHF; unused by a reward model

    def __len__(self) -> int:
        return len(self.queries)


def token_digest(token: str) -> bytes:
    """SHA-256 of a token: replicas keep only this, so the token never leaves the driver."""
    return hashlib.sha256(token.encode("utf-8")).digest()


def check_bearer(authorization: str | None, digest: bytes | None) -> None:
    """No-op when auth is off (`digest` None); else the header must carry the token."""
    if digest is None:
        return
    scheme, _, value = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise RequestError(401, "missing bearer token: send the header `Authorization: Bearer <token>`")
    if not hmac.compare_digest(token_digest(value.strip()), digest):
        raise RequestError(401, "invalid bearer token")


def _type(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def _string_list(data: dict, key: str, limits: Limits, *, what: str) -> list[str] | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, list):
        raise RequestError(422, f"`{key}` must be a list of strings ({what}), got {_type(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise RequestError(422, f"`{key}[{i}]` must be a string, got {_type(item)}")
        if len(item) > limits.max_query_chars:
            raise RequestError(413, f"`{key}[{i}]` has {len(item)} characters; the limit is {limits.max_query_chars}")
        if not item.isascii():
            try:
                item.encode("utf-8")  # JSON's \ud800 escapes decode to lone surrogates, which no tokenizer takes
            except UnicodeEncodeError as exc:
                raise RequestError(422, f"`{key}[{i}]` is not valid Unicode text: lone surrogate "
                                        f"{item[exc.start]!r} at character {exc.start}") from None
    return value


def parse_reward_request(body: bytes, limits: Limits) -> RewardRequest:
    if len(body) > limits.max_body_bytes:
        raise RequestError(413, f"request body of {len(body)} bytes exceeds the limit of {limits.max_body_bytes}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(400, f"request body is not UTF-8 JSON (bad byte at offset {exc.start})") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise RequestError(400, f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise RequestError(400, "request body is JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise RequestError(422, f"request body must be a JSON object with a `query` list, got {_type(data)}")
    if "query" not in data:
        raise RequestError(422, "missing field `query`: a list of prompt+response strings")
    if isinstance(data["query"], list) and len(data["query"]) > limits.max_batch:
        raise RequestError(413, f"{len(data['query'])} queries in one request; the limit is {limits.max_batch}")
    queries = _string_list(data, "query", limits, what="prompt + response texts")
    if not queries:
        raise RequestError(422, "`query` must be a non-empty list of strings")
    prompts = _string_list(data, "prompts", limits, what="one prompt per query")
    labels = data.get("labels")
    for key, value in (("prompts", prompts), ("labels", labels)):
        if value is not None and (not isinstance(value, list) or len(value) != len(queries)):
            got = f"{len(value)} items" if isinstance(value, list) else _type(value)
            raise RequestError(422, f"`{key}` must be a list as long as `query` ({len(queries)}), got {got}")
    return RewardRequest(queries=queries, prompts=prompts, labels=labels)


def reward_response(rewards: Sequence[float], raw: Sequence[float]) -> dict:
    """What OpenRLHF reads: `rewards` (advantages), `scores` (dynamic filtering), `extra_logs`."""
    rewards = [float(r) for r in rewards]
    return {"rewards": rewards, "scores": list(rewards), "extra_logs": {"raw_reward": [float(r) for r in raw]}}
