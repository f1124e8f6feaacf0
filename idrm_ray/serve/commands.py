"""The `serve` subcommand of `idrm-ray` (wired in `idrm_ray/cli.py`; `ppo` is `ppo/commands.py`).

    idrm-ray serve --checkpoint DIR [--host H] [--port P] [--token-env VAR] [key=value ...]
    idrm-ray serve --checkpoint DIR --smoke               # start, answer, short load test, stop
    idrm-ray serve --checkpoint DIR --soak 10 [--out DIR] # 10-minute soak on loopback (serve/soak.py)
    idrm-ray serve --checkpoint DIR --score-references refs.jsonl --out refs.scored.jsonl

Bad input ends with one line and exit status 2, as for the other subcommands.
"""
from __future__ import annotations

import argparse
import sys

from idrm_ray.config import ConfigError, describe, load_config

__all__ = ["SERVE_COMMANDS", "add_serve_commands", "run_serve_command"]

SERVE_COMMANDS = ("serve",)
EXIT_BAD_INPUT = 2


def add_serve_commands(sub) -> None:
    p = sub.add_parser("serve", help="serve a reward checkpoint (OpenRLHF remote reward protocol, Ray Serve)")
    p.add_argument("--checkpoint", help="saved reward model directory (model.checkpoint=...)")
    p.add_argument("--host", help="bind address (server.host=...; default 127.0.0.1)")
    p.add_argument("--port", type=int, help="TCP port (server.port=...; default 5000)")
    p.add_argument("--token-env", help="environment variable holding the bearer token (server.token_env=...)")
    p.add_argument("--backend", choices=["ray", "plain"], help="Ray Serve (default) or one uvicorn process")
    p.add_argument("--smoke", action="store_true", help="start, score a sample, run a short load test, stop")
    p.add_argument("--soak", type=float, metavar="MINUTES",
                   help="start, soak with mixed valid/invalid traffic for MINUTES, report, stop (exit 1 on 5xx "
                        "or RSS growth >= 10%%)")
    p.add_argument("--score-references", metavar="IN", help="PAR: write ref_rewards for a references JSONL")
    p.add_argument("--out", help="output JSONL of --score-references; report folder of --soak")
    _common(p)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file")
    p.add_argument("--help-config", action="store_true", help="list every config key and exit")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")


def _serve_overrides(args: argparse.Namespace) -> list[str]:
    out = list(args.overrides)
    for flag, key in (("checkpoint", "model.checkpoint"), ("host", "server.host"), ("port", "server.port"),
                      ("token_env", "server.token_env"), ("backend", "server.backend")):
        value = getattr(args, flag)
        if value is not None:
            out.append(f"{key}={value}")
    return out


def _serve(args: argparse.Namespace) -> int:
    from idrm_ray.config.serve import ServeJobConfig

    if args.help_config:
        print(describe(ServeJobConfig))
        return 0
    cfg = load_config(ServeJobConfig, args.config, _serve_overrides(args))
    from idrm_ray.serve import runner

    if args.score_references:
        if not args.out:
            raise ConfigError("--score-references needs --out FILE for the scored references")
        return runner.score_references_cli(cfg, args.score_references, args.out)
    if args.soak is not None:
        from idrm_ray.serve.soak import soak

        if args.soak <= 0:
            raise ConfigError(f"--soak takes a positive number of minutes, got {args.soak:g}")
        seconds = args.soak * 60
        return soak(cfg, duration_s=seconds, out_dir=args.out, window_s=min(30.0, seconds / 10))
    return runner.serve(cfg, smoke_test=args.smoke)


def run_serve_command(args: argparse.Namespace) -> int:
    from idrm_ray.serve.checkpoint_check import CheckError

    try:
        return _serve(args)
    except ConfigError as exc:
        print(f"idrm-ray: config error: {exc}", file=sys.stderr)
    except CheckError as exc:
        print(f"idrm-ray: {args.command} check failed: {exc}", file=sys.stderr)
    except (TimeoutError, RuntimeError) as exc:
        print(f"idrm-ray: {args.command} failed: {exc}", file=sys.stderr)
        return 1
    return EXIT_BAD_INPUT
