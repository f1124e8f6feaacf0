"""OpenRLHF `reward_func` file: PAR reward shaping over the idrm_ray reward server.

PAR (Fu et al., "Reward Shaping to Mitigate Reward Hacking in RLHF", arXiv 2502.18770;
METHOD.md §10): the RL reward is the Bradley-Terry probability that the response beats
reference responses of the SFT policy,

    r_PAR(x, y) = (1/K) Σ_k σ( r(x, y) − r(x, y_ref_k) )   ∈ (0, 1),

bounded, steep near the reference and flat far from it; 0.5 when y scores like the
references. K = 1 suffices (the paper); their repo uses 5.

OpenRLHF loads this file when `--reward.remote_url` is a `.py` path and calls
`reward_func(queries, prompts, labels)` in its vLLM actors (one rollout per call, in a
worker thread). It is self-contained on purpose (stdlib, plus torch which OpenRLHF has)
so it runs on cluster nodes without idrm_ray. Settings come from the environment (the
PPO job sets them in the Ray job's runtime_env):

    IDRM_REWARD_URL          http(s)://host:port/get_reward of `idrm-ray serve` (required)
    IDRM_REWARD_TOKEN        bearer token; or IDRM_REWARD_TOKEN_FILE, a file holding it
    IDRM_PAR_REFERENCES      JSONL rows {"prompt", "references": [...], "ref_rewards": [...]?};
                             empty: no shaping, the server's reward is passed through
                             (the way to call an authenticated server from OpenRLHF)
    IDRM_PAR_MISSING         error (default) | neutral: a prompt without references gets 0.5
    IDRM_PAR_REF_SUFFIX      appended to prompt + reference when scoring references here
    IDRM_REWARD_TIMEOUT_S    per HTTP call (default 60); 3 tries with back-off

`ref_rewards` precomputed (`idrm-ray serve --score-references`) are used as given; rows
without them are scored through the server on first use and cached. Either way they must
come from the same model and normalisation as the server's rewards.
"""
from __future__ import annotations

import json
import math
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

ENV_URL = "IDRM_REWARD_URL"
ENV_TOKEN = "IDRM_REWARD_TOKEN"
ENV_TOKEN_FILE = "IDRM_REWARD_TOKEN_FILE"
ENV_REFERENCES = "IDRM_PAR_REFERENCES"
ENV_MISSING = "IDRM_PAR_MISSING"
ENV_REF_SUFFIX = "IDRM_PAR_REF_SUFFIX"
ENV_TIMEOUT = "IDRM_REWARD_TIMEOUT_S"


# -- the math ---------------------------------------------------------------------------------


def sigmoid(x: float) -> float:
    """Stable logistic function (no overflow for large |x|)."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def par_reward(reward: float, ref_rewards: Sequence[float]) -> float:
    """mean_k σ(r − r_ref_k). In (0, 1) for finite inputs (rounds to 0 or 1 in float64
    once |r − r_ref| > ~37); exactly 0.5 when r equals every r_ref."""
    if not ref_rewards:
        raise ValueError("PAR needs at least one reference reward")
    return sum(sigmoid(reward - r) for r in ref_rewards) / len(ref_rewards)


# -- references -------------------------------------------------------------------------------


def read_references(path: str | os.PathLike) -> dict[str, dict]:
    """prompt -> {"references": [str, ...], "ref_rewards": [float, ...] | None}; one clear
    line naming the file and row for any bad row."""
    out: dict[str, dict] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}, row {n}"
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{where}: not JSON ({exc})") from None
            prompt, refs, rewards = row.get("prompt"), row.get("references"), row.get("ref_rewards")
            if not isinstance(prompt, str) or not prompt:
                raise ValueError(f"{where}: `prompt` must be a non-empty string")
            if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
                raise ValueError(f"{where}: `references` must be a non-empty list of strings")
            if rewards is not None and (
                not isinstance(rewards, list) or len(rewards) != len(refs)
                or not all(isinstance(r, (int, float)) and math.isfinite(r) for r in rewards)
            ):
                raise ValueError(f"{where}: `ref_rewards` must be {len(refs)} finite numbers, one per reference")
            if prompt in out:
                raise ValueError(f"{where}: prompt repeated (first seen earlier in the file)")
            out[prompt] = {"references": refs, "ref_rewards": None if rewards is None else [float(r) for r in rewards]}
    return out


# -- the server -------------------------------------------------------------------------------


class RewardClient:
    """POSTs OpenRLHF's protocol to the reward server, with the bearer token if any."""

    def __init__(self, url: str, *, token: str | None = None, timeout_s: float = 60.0, tries: int = 3):
        self.url, self.token, self.timeout_s, self.tries = url, token, timeout_s, tries

    def rewards(self, queries: list[str], prompts: list[str] | None = None) -> dict:
        payload = {"query": queries, "prompts": prompts, "labels": None}
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = json.dumps(payload).encode("utf-8")
        for attempt in range(self.tries):
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as resp:
                    return json.loads(resp.read())
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode("utf-8", "replace")[:300]
                if exc.code < 500:  # our request is wrong: retrying will not help
                    raise RuntimeError(f"reward server {self.url} refused the request ({exc.code}): {detail}") from None
                error = f"{exc.code}: {detail}"
            except (urllib.error.URLError, OSError, ValueError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            time.sleep(0.5 * 2**attempt)
        raise RuntimeError(f"reward server {self.url} failed {self.tries} times, last: {error}")


# -- the shaper -------------------------------------------------------------------------------


def _as_output(values: dict[str, list[float]]):
    try:
        import torch

        return {k: torch.tensor(v, dtype=torch.float32) for k, v in values.items()}
    except ImportError:  # pragma: no cover - OpenRLHF always has torch
        return values


class PARShaper:
    """`__call__(queries, prompts, labels)` -> OpenRLHF's reward dict."""

    def __init__(self, client: RewardClient, references: dict[str, dict] | None, *,
                 missing: str = "error", ref_suffix: str = ""):
        if missing not in ("error", "neutral"):
            raise ValueError(f"{ENV_MISSING} must be error or neutral, got {missing!r}")
        self.client, self.references, self.missing, self.ref_suffix = client, references, missing, ref_suffix
        self._lock = threading.Lock()

    def ref_rewards(self, prompt: str) -> list[float] | None:
        row = self.references.get(prompt)
        if row is None:
            row = self.references.get(prompt.strip())
        if row is None:
            return None
        with self._lock:  # score a prompt's references once, even from several threads
            if row["ref_rewards"] is None:
                queries = [prompt + ref + self.ref_suffix for ref in row["references"]]
                answer = self.client.rewards(queries, [prompt] * len(queries))
                row["ref_rewards"] = [float(r) for r in answer["rewards"]]
            return row["ref_rewards"]

    def __call__(self, queries: Sequence[str], prompts: Sequence[str], labels=None):
        answer = self.client.rewards(list(queries), list(prompts))
        raw = [float(r) for r in answer["rewards"]]
        if self.references is None:  # passthrough: the server's reward, authenticated
            return self._pack(raw, raw, {"raw_reward": raw})
        shaped, ref_means, missing = [], [], []
        for r, prompt in zip(raw, prompts):
            refs = self.ref_rewards(prompt)
            if refs is None:
                if self.missing == "error":
                    raise KeyError(f"PAR: no references for prompt {prompt[:80]!r}; add it to ${ENV_REFERENCES} "
                                   f"or set {ENV_MISSING}=neutral")
                shaped.append(0.5)
                ref_means.append(r)
                missing.append(1.0)
                continue
            shaped.append(par_reward(r, refs))
            ref_means.append(sum(refs) / len(refs))
            missing.append(0.0)
        logs = {"raw_reward": raw, "par_ref_reward": ref_means, "par_missing_ref": missing}
        return self._pack(shaped, shaped, logs)

    @staticmethod
    def _pack(rewards: list[float], scores: list[float], logs: dict[str, list[float]]) -> dict:
        tensors = _as_output({"rewards": rewards, "scores": scores, **logs})
        return {"rewards": tensors["rewards"], "scores": tensors["scores"],
                "extra_logs": {k: tensors[k] for k in logs}}


def _resolve(path: str) -> Path:
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    return Path(__file__).resolve().parent / p  # staged next to this file by the PPO job


def shaper_from_env(env: dict | None = None) -> PARShaper:
    env = os.environ if env is None else env
    url = env.get(ENV_URL, "")
    if not url:
        raise RuntimeError(f"${ENV_URL} is not set: the reward server's /get_reward URL")
    token = env.get(ENV_TOKEN) or None
    if not token and env.get(ENV_TOKEN_FILE):
        token = _resolve(env[ENV_TOKEN_FILE]).read_text(encoding="utf-8").strip() or None
    client = RewardClient(url, token=token, timeout_s=float(env.get(ENV_TIMEOUT, "60")))
    refs_path = env.get(ENV_REFERENCES, "")
    references = read_references(_resolve(refs_path)) if refs_path else None
    return PARShaper(client, references, missing=env.get(ENV_MISSING, "error") or "error",
                     ref_suffix=env.get(ENV_REF_SUFFIX, ""))


_SHAPER: PARShaper | None = None
_SHAPER_LOCK = threading.Lock()


def reward_func(queries, prompts, labels, **kwargs):
    """OpenRLHF's entry point: `queries` are prompt + response texts, `prompts` the prompts."""
    global _SHAPER
    with _SHAPER_LOCK:
        if _SHAPER is None:
            _SHAPER = shaper_from_env()
    return _SHAPER(queries, prompts, labels)
