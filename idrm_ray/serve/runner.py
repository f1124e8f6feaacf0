"""`idrm-ray serve`: check, start the reward server, wait until it answers, then either
serve until interrupted or (smoke) score a sample, run a short load test and stop.

    idrm-ray serve --checkpoint runs/x/model                     # loopback, Ray Serve
    IDRM_RM_TOKEN=... idrm-ray serve --checkpoint DIR --host 0.0.0.0 --token-env IDRM_RM_TOKEN
    idrm-ray serve --checkpoint DIR --smoke                      # start, answer, stop
"""
from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from idrm_ray import local_ray
from idrm_ray.config import ConfigError
from idrm_ray.config.serve import ServeJobConfig

__all__ = ["ServerHandle", "check_serve_config", "is_loopback", "resolve_token", "scorer_from_config", "serve",
           "start_server", "wait_healthy"]

SMOKE_QUERIES = ["Human: What is the capital of France?\n\nAssistant: Paris.", "Human: hello?\n\nAssistant: yes."]
SMOKE_PROMPTS = ["Human: What is the capital of France?\n\nAssistant:", "Human: hello?\n\nAssistant:"]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname: assume it resolves beyond this machine


def resolve_token(token_env: str) -> str | None:
    """The bearer token from the named environment variable (None: auth off)."""
    if not token_env:
        return None
    token = os.environ.get(token_env, "")
    if not token.strip():
        raise ConfigError(f"server.token_env names ${token_env}, but it is unset or empty: export it, "
                          "or set server.token_env= (empty) to serve without auth on loopback")
    return token.strip()


def check_serve_config(cfg: ServeJobConfig) -> None:
    from idrm_ray.serve.checkpoint_check import check_reward_checkpoint

    if not cfg.model.checkpoint:
        raise ConfigError("no checkpoint to serve: pass --checkpoint DIR (or model.checkpoint=DIR)")
    check_reward_checkpoint(cfg.model.checkpoint)


def loud_warning(cfg: ServeJobConfig, token: str | None, *, out: Callable[[str], None]) -> None:
    if token is None and not is_loopback(cfg.server.host):
        bar = "!" * 78
        out(f"{bar}\nWARNING: serving the reward model on {cfg.server.host}:{cfg.server.port} WITHOUT AUTH.\n"
            f"Anyone who can reach this port can query it. Set a token: export IDRM_RM_TOKEN=<secret> and pass\n"
            f"--token-env IDRM_RM_TOKEN (clients send `Authorization: Bearer <secret>`), or bind 127.0.0.1.\n{bar}")


class ServerHandle:
    """A started server: its URL and how to stop it."""

    def __init__(self, url: str, stop: Callable[[], None]):
        self.base_url, self._stop = url, stop

    @property
    def reward_url(self) -> str:
        return self.base_url + "/get_reward"

    def stop(self) -> None:
        self._stop()


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def wait_healthy(base_url: str, *, timeout_s: float, alive: Callable[[], bool] = lambda: True) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"the reward server stopped before answering on {base_url}")
        try:
            with urllib.request.urlopen(base_url + "/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise TimeoutError(f"the reward server did not answer on {base_url}/health within {timeout_s:.0f} s")


def _wait_or_stop(handle: ServerHandle, *, timeout_s: float, alive: Callable[[], bool] = lambda: True) -> None:
    try:
        wait_healthy(handle.base_url, timeout_s=timeout_s, alive=alive)
    except BaseException:
        handle.stop()
        raise


def scorer_from_config(cfg: ServeJobConfig):
    from idrm_ray.serve.scoring import RewardScorer

    m = cfg.model
    return RewardScorer.from_checkpoint(
        m.checkpoint, dtype=m.dtype, use_gpu=cfg.deployment.num_gpus > 0, attn_implementation=m.attn_implementation,
        max_len=m.max_len, batch_size=m.batch_size, normalize_rewards=m.normalize,
        special_tokens=m.special_tokens, append_eos=m.append_eos,
    )


def _start_plain(cfg: ServeJobConfig, token: str | None) -> ServerHandle:
    import uvicorn

    from idrm_ray.serve.app import RewardService, build_app, local_score_fn
    from idrm_ray.serve.protocol import Limits, token_digest

    m, s = cfg.model, cfg.server
    scorer = scorer_from_config(cfg)
    limits = Limits(max_body_bytes=s.max_body_bytes, max_batch=s.max_batch, max_query_chars=s.max_query_chars)
    service = RewardService(local_score_fn(scorer), limits=limits, token_digest=token_digest(token) if token else None,
                            info={"checkpoint": m.checkpoint, "backend": "plain", **scorer.info()})
    server = uvicorn.Server(uvicorn.Config(build_app(service), host=s.host, port=s.port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="idrm-reward-server", daemon=True)
    thread.start()
    url = f"http://{_client_host(s.host)}:{s.port}"
    handle = ServerHandle(url, lambda: (setattr(server, "should_exit", True), thread.join(10)))
    _wait_or_stop(handle, timeout_s=s.ready_timeout_s, alive=thread.is_alive)
    return handle


def _start_ray(cfg: ServeJobConfig, token: str | None) -> ServerHandle:
    import ray
    from ray import serve

    from idrm_ray.serve.deployment import build_application

    s = cfg.server
    # Only a Ray we start here is ours to end; on a cluster (ray_address set, or a Ray
    # already up) stopping deletes our app and leaves Serve up for the others.
    owns_ray = not ray.is_initialized() and not s.ray_address
    if not ray.is_initialized():
        # "local", not None: None would join whatever Ray this machine started last
        # (/tmp/ray/ray_current_cluster), e.g. someone else's test cluster.
        if s.ray_address:
            ray.init(address=s.ray_address, log_to_driver=False)
        else:
            local_ray.init(log_to_driver=False)
    serve.start(http_options={"host": s.host, "port": s.port})
    serve.run(build_application(cfg, token), name=s.app_name, route_prefix="/", blocking=False)
    url = f"http://{_client_host(s.host)}:{s.port}"

    def stop() -> None:
        serve.delete(s.app_name)
        if owns_ray:
            serve.shutdown()
            ray.shutdown()

    handle = ServerHandle(url, stop)
    _wait_or_stop(handle, timeout_s=s.ready_timeout_s)
    return handle


def start_server(cfg: ServeJobConfig, *, out: Callable[[str], None] = print) -> ServerHandle:
    """Check, start (Ray Serve or plain uvicorn) and wait until `/health` answers."""
    check_serve_config(cfg)
    token = resolve_token(cfg.server.token_env)
    loud_warning(cfg, token, out=out)
    start = _start_ray if cfg.server.backend == "ray" else _start_plain
    return start(cfg, token)


def _post(url: str, payload: dict, token: str | None) -> dict:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def smoke(handle: ServerHandle, token: str | None, *, out: Callable[[str], None], requests: int = 200) -> dict:
    """One scored request and a short bounded load test; returns the figures."""
    from idrm_ray.serve.loadtest import run_load_test

    answer = _post(handle.reward_url, {"query": SMOKE_QUERIES, "prompts": SMOKE_PROMPTS, "labels": [None, None]}, token)
    out(f"smoke: rewards {[round(r, 4) for r in answer['rewards']]} for {len(SMOKE_QUERIES)} queries")
    payloads = [{"query": [q], "prompts": [p], "labels": [None]} for q, p in zip(SMOKE_QUERIES, SMOKE_PROMPTS)]
    stats = run_load_test(handle.reward_url, payloads, requests=requests, concurrency=8, timeout_s=120, token=token)
    out(f"smoke: {stats.line()}")
    return {"rewards": answer["rewards"], "load": stats}


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM (e.g. `ray job stop`) stops the server like Ctrl-C


def _ready_line(cfg: ServeJobConfig, handle: ServerHandle, token: str | None) -> str:
    url = handle.reward_url
    if not is_loopback(cfg.server.host):
        url = url.replace("127.0.0.1", socket.gethostname(), 1)
    how = (f"idrm-ray ppo reward.url={url} reward.token_env=<VAR> (OpenRLHF's own client sends no token)"
           if token else f"OpenRLHF: --reward.remote_url {url}")
    return f"reward server ready: POST {url} ({how})"


def serve(cfg: ServeJobConfig, *, smoke_test: bool = False, out: Callable[[str], None] = print) -> int:
    """Run until interrupted (or, with `smoke_test`, answer and stop). Exit status."""
    token = resolve_token(cfg.server.token_env)
    handle = start_server(cfg, out=out)
    out(_ready_line(cfg, handle, token))
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main else None
    try:
        if smoke_test:
            figures = smoke(handle, token, out=out)
            return 0 if figures["load"].errors == 0 else 1
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        out("interrupted: stopping the reward server")
        return 0
    finally:
        if main and previous is not None:
            signal.signal(signal.SIGTERM, previous)
        handle.stop()


def score_references_cli(
    cfg: ServeJobConfig, refs_in: str, refs_out: str, *, out: Callable[[str], None] = print
) -> int:
    """`idrm-ray serve --score-references IN --out OUT`: PAR reference rewards with the
    same scorer settings as the server, no server needed."""
    from idrm_ray.serve.checkpoint_check import CheckError
    from idrm_ray.serve.par import score_references
    from idrm_ray.serve.par_reward import read_references

    check_serve_config(cfg)
    try:
        read_references(refs_in)  # fail on a bad row before loading the model
    except (OSError, ValueError) as exc:
        raise CheckError(f"--score-references: {exc}") from None
    n = score_references(refs_in, refs_out, scorer_from_config(cfg).score)
    out(f"scored {n} prompts' references -> {Path(refs_out)}")
    return 0

