"""The `ppo` subcommand of `idrm-ray` (wired in `idrm_ray/cli.py`).

    idrm-ray ppo --config ppo.yaml [key=value ...] [--dry-run]

Bad input ends with one line and exit status 2, as for the other subcommands.
"""
from __future__ import annotations

import argparse
import sys

from idrm_ray.config import ConfigError, describe, load_config

__all__ = ["PPO_COMMANDS", "add_ppo_commands", "run_ppo_command"]

PPO_COMMANDS = ("ppo",)
EXIT_BAD_INPUT = 2


def add_ppo_commands(sub) -> None:
    q = sub.add_parser("ppo", help="check, print or submit OpenRLHF PPO (train_ppo_ray) against our reward model")
    q.add_argument("--dry-run", action="store_true", help="run the checks and print the command; submit nothing")
    q.add_argument("--config", help="YAML config file")
    q.add_argument("--help-config", action="store_true", help="list every config key and exit")
    q.add_argument("overrides", nargs="*", help="dotted key=value overrides")


def _ppo(args: argparse.Namespace) -> int:
    from idrm_ray.config.ppo import PPOJobConfig

    if args.help_config:
        print(describe(PPOJobConfig))
        return 0
    cfg = load_config(PPOJobConfig, args.config, list(args.overrides))
    from idrm_ray.ppo.job import run_ppo

    return run_ppo(cfg, dry_run=args.dry_run)


def run_ppo_command(args: argparse.Namespace) -> int:
    from idrm_ray.ppo.openrlhf_cli import FlagError, OpenRLHFMissing
    from idrm_ray.serve.checkpoint_check import CheckError

    try:
        return _ppo(args)
    except ConfigError as exc:
        print(f"idrm-ray: config error: {exc}", file=sys.stderr)
    except (CheckError, FlagError, OpenRLHFMissing) as exc:
        print(f"idrm-ray: {args.command} check failed: {exc}", file=sys.stderr)
    except (TimeoutError, RuntimeError) as exc:
        print(f"idrm-ray: {args.command} failed: {exc}", file=sys.stderr)
        return 1
    return EXIT_BAD_INPUT
