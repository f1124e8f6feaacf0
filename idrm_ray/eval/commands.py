"""The `eval` and `report` subcommands of `idrm-ray` (plain flags; no config tree).

    idrm-ray eval --checkpoint runs/default/id/checkpoint --data allenai/reward-bench
    idrm-ray eval --checkpoint CKPT --data RMB_dataset/Pairwise_set --data Anthropic/hh-rlhf \\
        --baseline runs/default/bt/checkpoint --diagnostics
    idrm-ray eval --checkpoint CKPT --data allenai/reward-bench-2 --data rm-bench/total_dataset.json \\
        --data RMB_dataset/BoN_set                      # best-of-N sets: official section scores
    idrm-ray report runs/default runs/sweep-lam08 --output reports/lam

Bad input (data, missing folders, bad flags) ends with one line and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

EVAL_COMMANDS = ("eval", "report")
EXIT_BAD_INPUT = 2


def _template(text: str) -> tuple[str, str, str] | str:
    if text == "chat":  # the tokenizer's own chat template (checkpoints from elsewhere record none)
        return "chat"
    parts = text.encode().decode("unicode_escape").split("|")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError("--template is chat or PREFIX|SEPARATOR|SUFFIX (escapes like \\n allowed)")
    return parts[0], parts[1], parts[2]


def add_eval_commands(sub) -> None:
    p = sub.add_parser(
        "eval", help="score eval sets (RewardBench 1/2, RM-Bench, RMB, HH, generic) with a checkpoint; diagnostics"
    )
    p.add_argument("--checkpoint", required=True, help="reward-model directory (or hub id)")
    p.add_argument("--data", action="append", default=[], help="eval source: file, folder or hub id (repeatable)")
    p.add_argument(
        "--layout",
        default="auto",
        choices=("auto", "rewardbench", "rmb", "hh", "generic", "ultrafeedback", "rewardbench2", "rmbench", "rmb-bon"),
    )
    p.add_argument(
        "--split",
        default=None,
        help="hub split or folder split (default: filtered for RewardBench, test for RewardBench 2 and HH)",
    )
    p.add_argument(
        "--render",
        default="auto",
        choices=("auto", "hh", "raw"),
        help="RewardBench 1/2 and RM-Bench prompts as one HH turn (hh) or as is (raw); auto: raw when the "
             "checkpoint was trained with its chat template, else hh",
    )
    p.add_argument("--output-dir", default=None, help="eval folder (default <run>/<method>/eval or eval/<name>)")
    p.add_argument("--label", default=None, help="model name in reports")
    p.add_argument("--max-pairs", type=int, default=None, help="read at most this many pairs per source")
    p.add_argument("--skip-bad-rows", action="store_true", help="skip and count malformed rows instead of failing")
    p.add_argument(
        "--max-len", type=int, default=None, help="student tokens per sequence (default: the run's, else 1024)"
    )
    p.add_argument("--template", type=_template, default=None, help="`chat` (the tokenizer's chat template) or PREFIX|SEPARATOR|SUFFIX (default: as the checkpoint "
                        "was trained, from its metadata or run config)")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per forward")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument("--ray", dest="use_ray", action="store_true", help="score with a Ray Data actor pool (large sets)")
    p.add_argument("--ray-address", default="", help="Ray cluster address (default: start Ray locally)")
    p.add_argument("--ray-concurrency", type=int, default=1, help="scoring actors")
    p.add_argument("--ray-gpus", type=float, default=0.0, help="GPUs per scoring actor (0: CPU)")
    p.add_argument(
        "--baseline", default=None, help="checkpoint or eval folder to test against (Wilcoxon, McNemar, bootstrap)"
    )
    p.add_argument(
        "--pair-score",
        default="prob",
        choices=("prob", "margin", "outcome"),
        help="per-pair (per-prompt) score for Wilcoxon",
    )
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--diagnostics", action="store_true", help="stage analysis, progressive masking, token view")
    p.add_argument("--diag-pairs", type=int, default=64, help="pairs sampled for the diagnostics")
    p.add_argument("--token-view-pair", type=int, default=None, help="pair index for the token view")
    r = sub.add_parser("report", help="compare training runs and eval folders side by side")
    r.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="training run, eval folder or data-set eval folder")
    r.add_argument("--output", default=None, help="output folder (default <RUN_DIR>/report, or ./report for several)")
    r.add_argument("--n-boot", type=int, default=2000)


def _eval_options(args: argparse.Namespace):
    from idrm_ray.eval.model import EvalOptions

    names = [f for f in EvalOptions.__dataclass_fields__ if f not in ("checkpoint", "data")]
    return EvalOptions(checkpoint=args.checkpoint, data=tuple(args.data), **{n: getattr(args, n) for n in names})


def run_eval_command(args: argparse.Namespace) -> int:
    from idrm_ray.data import DataError, format_data_error
    from idrm_ray.data.errors import one_line
    from idrm_ray.eval.report import ReportError
    from idrm_ray.eval.model import EvalError

    try:
        if args.command == "report":
            from idrm_ray.eval.report import compare_runs

            compare_runs(args.run_dirs, output_dir=args.output, n_boot=args.n_boot)
        else:
            from idrm_ray.eval.runner import run_eval

            run_eval(_eval_options(args))
        return 0
    except DataError as exc:
        print(f"idrm-ray: data error: {format_data_error(exc)}", file=sys.stderr)
    except (EvalError, ReportError) as exc:
        print(f"idrm-ray: {args.command}: {one_line(str(exc))}", file=sys.stderr)
    except OSError as exc:  # the output folder cannot be written (permissions, disk)
        print(f"idrm-ray: {args.command}: {format_data_error(exc)}", file=sys.stderr)
    return EXIT_BAD_INPUT
