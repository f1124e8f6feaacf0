"""A bounded soak of the reward server on loopback: mixed valid and invalid traffic for a
fixed time, then a verdict on 5xx answers, refusals and resident memory.

    python -m idrm_ray.serve.soak --minutes 10               # a tiny saved model, Ray Serve, loopback
    python -m idrm_ray.serve.soak --checkpoint DIR --seconds 90 --window-s 10
    idrm-ray serve --checkpoint DIR --soak 10 [--out DIR]   # the same from the main CLI

A few concurrent clients (`clients`) send, until the deadline, valid requests (batch sizes
1..`server.max_batch`, short to over-`max_len` queries, with and without prompts) and, with
probability `invalid_fraction`, one of the invalid cases in turn (malformed JSON, missing
fields, wrong types, empty lists, oversize bodies/batches/strings, wrong content-type,
wrong method or path): each has the 4xx it must get, with a JSON `{"detail": ...}` body.
The server process's RSS (the Serve replica actor; the proxy is reported too) is sampled
every second. The report (`soak.json`, `soak.md`) has the answers by status code and by
case, p50/p99 latency and median RSS per time window, and RSS after warm-up vs at the end
(each the median over one window, so a large batch's freed activations are not growth).

It passes (exit 0) when there is no 5xx and no transport error, every valid request got
200 with one finite reward per query, every invalid one got its 4xx with a detail, and the
replica's RSS grew by less than `max_rss_growth` (10%) from the end of warm-up to the end.
The soak always stops by itself: clients start nothing after the deadline, and each
request has its own timeout.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from idrm_ray.serve.protocol import Limits
from idrm_ray.serve.soak_cases import drive, invalid_cases, valid_cases
from idrm_ray.serve.soak_report import summarize, write_report

__all__ = ["RssSampler", "main", "read_rss", "run_soak", "serve_pids", "soak"]


# -- resident memory ---------------------------------------------------------------------

def read_rss(pid: int) -> int | None:
    """Resident set size in bytes (psutil, else /proc/<pid>/status); None once it is gone."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            return psutil.Process(pid).memory_info().rss
        except psutil.Error:
            return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class RssSampler:
    """Samples the RSS of named processes every `interval_s` in a daemon thread."""

    def __init__(self, pids: dict[str, int], *, interval_s: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.pids, self.interval_s, self.clock = dict(pids), interval_s, clock
        self.samples: dict[str, list[tuple[float, int]]] = {name: [] for name in pids}
        self.t0 = clock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="idrm-soak-rss", daemon=True)

    def sample(self) -> None:
        t = self.clock() - self.t0
        for name, pid in self.pids.items():
            rss = read_rss(pid)
            if rss is not None:
                self.samples[name].append((t, rss))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def start(self) -> "RssSampler":
        self.t0 = self.clock()
        self.sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sample()  # the end figure: after the last request


def serve_pids(app_name: str, *, timeout_s: float = 30.0) -> dict[str, int]:
    """Process ids of the Serve application's replica actors (`replica <id>`) and of the
    HTTP proxy (`proxy`), asked of each actor itself (Ray's named actors, no dashboard)."""
    import ray

    found: dict[str, int] = {}
    for actor in ray.util.list_named_actors(all_namespaces=True):
        name, namespace = actor["name"], actor["namespace"]
        if name.startswith(f"SERVE_REPLICA::{app_name}#"):
            label = "replica " + name.rsplit("#", 1)[-1]
        elif "SERVE_PROXY_ACTOR" in name:
            label = "proxy"
        else:
            continue
        handle = ray.get_actor(name, namespace=namespace)
        found[label] = ray.get(handle.__ray_call__.remote(lambda self: os.getpid()), timeout=timeout_s)
    if not any(label.startswith("replica") for label in found):
        raise RuntimeError(f"no Serve replica actor of application {app_name!r} found to sample its memory")
    return found


# -- the soak ---------------------------------------------------------------------------

def run_soak(base_url: str, *, limits: Limits, duration_s: float, out_dir: str | Path, pids: dict[str, int],
             window_s: float = 30.0, warmup_s: float | None = None, clients: int = 4,
             invalid_fraction: float = 0.3, max_rss_growth: float = 0.10, request_timeout_s: float = 60.0,
             rss_interval_s: float = 1.0, max_len: int | None = None, eos_text: str | None = None,
             token: str | None = None, seed: int = 0, extra: dict | None = None,
             out: Callable[[str], None] = print) -> dict:
    """Soak a running server at `base_url`; writes `soak.json` and `soak.md`, returns the report."""
    if duration_s <= 0 or window_s <= 0 or clients < 1 or not 0 <= invalid_fraction <= 1:
        raise ValueError("need duration_s > 0, window_s > 0, clients >= 1 and 0 <= invalid_fraction <= 1")
    warmup_s = min(60.0, duration_s / 10) if warmup_s is None else warmup_s
    valid = valid_cases(limits, seed=seed)
    invalid = invalid_cases(limits, max_len=max_len, eos_text=eos_text)
    settings = {"base_url": base_url, "duration_s": duration_s, "window_s": window_s, "warmup_s": warmup_s,
                "clients": clients, "invalid_fraction": invalid_fraction, "max_rss_growth": max_rss_growth,
                "request_timeout_s": request_timeout_s, "pids": dict(pids), "seed": seed,
                "limits": {"max_body_bytes": limits.max_body_bytes, "max_batch": limits.max_batch,
                           "max_query_chars": limits.max_query_chars},
                "valid_cases": len(valid), "invalid_cases": [c.name for c in invalid], **(extra or {})}
    out(f"soak: {duration_s:.0f} s, {clients} clients, {100 * invalid_fraction:.0f}% invalid "
        f"({len(invalid)} cases), RSS of {pids}")
    sampler = RssSampler(pids, interval_s=rss_interval_s).start()
    records = asyncio.run(drive(base_url, valid, invalid, duration_s=duration_s, clients=clients,
                                 invalid_fraction=invalid_fraction, request_timeout_s=request_timeout_s,
                                 seed=seed, token=token, t0=sampler.t0))
    sampler.stop()
    report = summarize(records, sampler.samples, duration_s=duration_s, window_s=window_s, warmup_s=warmup_s,
                       max_rss_growth=max_rss_growth, settings=settings)
    js, md = write_report(report, out_dir)
    lat = report["latency_valid_ok"]
    out(f"soak: {'PASSED' if report['passed'] else 'FAILED'}: {report['requests']} requests, statuses "
        f"{report['statuses']}, valid p50 {lat['p50_ms']} ms p99 {lat['p99_ms']} ms, replica RSS growth "
        f"{report['rss_growth_pct']}% after warm-up; report {md} and {js.name}")
    return report


def _eos_text(checkpoint: str) -> str | None:
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(checkpoint).eos_token
    except (OSError, ValueError):
        return None


def soak(cfg, *, duration_s: float, out_dir: str | Path | None = None, out: Callable[[str], None] = print,
         **kwargs) -> int:
    """Start the server of `cfg` on loopback, soak it, stop it. Exit status: 0 passed, 1 failed."""
    from idrm_ray.config import ConfigError
    from idrm_ray.serve.runner import is_loopback, resolve_token, start_server

    s = cfg.server
    if not is_loopback(s.host):
        raise ConfigError(f"the soak runs on loopback only: server.host={s.host} (use 127.0.0.1)")
    out_dir = Path(out_dir or Path("runs") / time.strftime("soak-%Y%m%d-%H%M%S"))
    token = resolve_token(s.token_env)
    limits = Limits(max_body_bytes=s.max_body_bytes, max_batch=s.max_batch, max_query_chars=s.max_query_chars)
    handle = start_server(cfg, out=out)
    try:
        pids = serve_pids(s.app_name) if s.backend == "ray" else {"plain server + clients": os.getpid()}
        extra = {"backend": s.backend, "checkpoint": cfg.model.checkpoint, "max_len": cfg.model.max_len,
                 "replicas": cfg.deployment.num_replicas}
        report = run_soak(handle.base_url, limits=limits, duration_s=duration_s, out_dir=out_dir, pids=pids,
                          max_len=cfg.model.max_len, eos_text=_eos_text(cfg.model.checkpoint), token=token,
                          extra=extra, out=out, **kwargs)
    finally:
        handle.stop()
    return 0 if report["passed"] else 1


def _tiny_checkpoint(folder: Path) -> str:
    from idrm_ray.core import tiny
    from idrm_ray.core.reward_model import save_reward_model

    tok = tiny.train_student_tokenizer()
    return str(save_reward_model(tiny.build_tiny_student(tok, num_layers=2), tok, folder / "model"))


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    from idrm_ray.config import ConfigError, load_config
    from idrm_ray.config.serve import ServeJobConfig

    p = argparse.ArgumentParser(prog="python -m idrm_ray.serve.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="reward model to serve (default: a tiny one saved under --out)")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--minutes", type=float, default=10.0, help="soak duration (default 10)")
    when.add_argument("--seconds", type=float, help="soak duration in seconds instead")
    p.add_argument("--window-s", type=float, help="latency window (default 30 s, or duration/10 when shorter)")
    p.add_argument("--warmup-s", type=float, help="warm-up before the RSS baseline (default min(60 s, 10%%))")
    p.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    p.add_argument("--invalid-fraction", type=float, default=0.3, help="share of invalid requests (default 0.3)")
    p.add_argument("--max-rss-growth", type=float, default=0.10, help="RSS growth limit after warm-up (0.10)")
    p.add_argument("--port", type=int, help="port on 127.0.0.1 (default: a free one)")
    p.add_argument("--backend", choices=["ray", "plain"], default="ray")
    p.add_argument("--out", help="report folder (default runs/soak-<time>)")
    p.add_argument("--config", help="YAML serve config")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides of the serve config")
    args = p.parse_args(argv)
    duration = args.seconds if args.seconds is not None else args.minutes * 60
    out_dir = Path(args.out or Path("runs") / time.strftime("soak-%Y%m%d-%H%M%S"))
    try:
        checkpoint = args.checkpoint or _tiny_checkpoint(out_dir)
        overrides = [f"model.checkpoint={checkpoint}", f"server.port={args.port or _free_port()}",
                     f"server.backend={args.backend}", *args.overrides]
        cfg = load_config(ServeJobConfig, args.config, overrides)
        return soak(cfg, duration_s=duration, out_dir=out_dir, window_s=args.window_s or min(30.0, duration / 10),
                    warmup_s=args.warmup_s, clients=args.clients, invalid_fraction=args.invalid_fraction,
                    max_rss_growth=args.max_rss_growth)
    except (ConfigError, ValueError) as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
