"""`idrm-ray`: one command line for every job (DESIGN.md §4).

    idrm-ray train                                  # the embedded default (preset `tiny`)
    idrm-ray train --config jobs/configs/x.yaml method.id.lam=0.8 run.name=sweep1
    idrm-ray train --preset llama3_8b_hh resources.ray_address=auto
    idrm-ray teacher                                # only the NLI teacher fine-tune
    idrm-ray train --help-config                    # every key, type, default and help
    idrm-ray train method.name=lf                   # a baseline: am, lf, warm, inform, id+am, id+lf, id+warm
    idrm-ray compare --methods all,ablations --seeds 0,1,2   # Tables 2/3: methods x seeds
    idrm-ray eval --checkpoint DIR --data SRC       # accuracy, significance, diagnostics
    idrm-ray report RUN_DIR [RUN_DIR ...]           # runs side by side
    idrm-ray serve --checkpoint DIR [--smoke]       # reward server (OpenRLHF remote protocol)
    idrm-ray ppo --config ppo.yaml [--dry-run]      # OpenRLHF PPO as a Ray job

Bad input (config or data) ends with one line naming the problem and exit status 2,
never a traceback.
"""
from __future__ import annotations

import argparse
import sys

from idrm_ray import console
from idrm_ray.config import ConfigError, describe, load_config
from idrm_ray.config.train import TrainJobConfig
from idrm_ray.eval.commands import EVAL_COMMANDS, add_eval_commands, run_eval_command
from idrm_ray.ppo.commands import PPO_COMMANDS, add_ppo_commands, run_ppo_command
from idrm_ray.serve.commands import SERVE_COMMANDS, add_serve_commands, run_serve_command

EXIT_BAD_INPUT = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="idrm-ray", description="Interaction-distilled reward models on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("train", "train reward models (BT / ID-RM); the embedded default with no arguments"),
        ("teacher", "fine-tune the NLI teacher only (same config tree as train)"),
        ("tune", "Ray Tune sweep over λ × N sharing one teacher-map cache (reduced tiny grid by default)"),
        ("compare", "train methods x seeds on the same data and write the Table 2/3 comparison"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", help="YAML config file (applied over the preset)")
        p.add_argument("--preset", default=None, help="named preset: tiny (default), llama3_8b_hh, local_hf")
        p.add_argument("--output-dir", help="parent folder of run folders (same as run.output_dir=...)")
        p.add_argument("--help-config", action="store_true", help="list every config key and exit")
        p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. method.id.lam=0.8")
        p.add_argument("--verbose", action="store_true",
                       help="show Ray's and the libraries' output on the console (default: <run folder>/logs/)")
        if name == "train":
            p.add_argument("--local", action="store_true",
                           help="train in this process: one worker, no Ray Train (debugging; same as run.local=true)")
        if name == "tune":
            p.add_argument("--lams", default="0.4,1.0", help="comma-separated λ grid")
            p.add_argument("--top-ns", default="1,2", help="comma-separated N grid")
            p.add_argument("--sweep-dir", default=None, help="sweep folder (default run.output_dir/run.name)")
            p.add_argument("--max-failures", type=int, default=1, help="retries per failed trial")
            p.add_argument("--no-cache", action="store_true",
                           help="no shared teacher-map cache: every trial runs the teacher (to compare)")
            p.add_argument("--no-asha", action="store_true", help="no early stopping: every trial trains to the end")
        if name == "compare":
            p.add_argument("--methods", default="all", help="comma-separated methods and ablations; `all` (the 9 "
                           "methods), `table2`, `ablations` (id-no-intra, id-no-inter, id-no-nli, id-alt-teacher); "
                           "`id@lam=0.4@top_n=2`: ID with method.id settings")
            p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
            p.add_argument("--eval", action="append", default=None, metavar="SRC",
                           help="eval set (path, HF id or `bundled`; repeatable); default: the run's eval pairs by kind")
            p.add_argument("--compare-dir", default=None, help="output folder (default run.output_dir/run.name)")
    add_eval_commands(sub)
    add_serve_commands(sub)
    add_ppo_commands(sub)
    return parser


def load_train_config(args: argparse.Namespace) -> TrainJobConfig:
    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"run.output_dir={args.output_dir}")
    if getattr(args, "local", False):
        overrides.append("run.local=true")
    preset = args.preset or (None if args.config else "tiny")
    if args.command == "compare" and preset == "tiny" and not args.config:
        from idrm_ray.compare.job import EMBEDDED_DEFAULTS

        overrides = [*EMBEDDED_DEFAULTS, *overrides]
    return load_config(TrainJobConfig, args.config, overrides, preset=preset)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # Overrides may also follow flags (`a=b --output-dir X c=d`): argparse leaves those over.
    takes_overrides = hasattr(args, "overrides")
    stray = [a for a in extra if not takes_overrides or "=" not in a or a.startswith("-")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    if args.command in EVAL_COMMANDS:
        if getattr(args, "use_ray", False):  # eval scores on a started Ray; it never starts one itself
            from idrm_ray.stream.cluster import init_ray

            init_ray(args.ray_address)
        return run_eval_command(args)
    if args.command in SERVE_COMMANDS:
        return run_serve_command(args)
    if args.command in PPO_COMMANDS:
        return run_ppo_command(args)
    if args.help_config:
        print(describe(TrainJobConfig))
        return 0
    try:
        cfg = load_train_config(args)
        with console.session(verbose=args.verbose):
            return _run(args.command, cfg, args)
    except Exception as exc:  # noqa: BLE001 - data errors cross Ray boundaries wrapped
        line = bad_input_line(exc)
        if line is None:
            raise
        console.error(line)
    return EXIT_BAD_INPUT


def bad_input_line(exc: BaseException) -> str | None:
    """The one terminal line for bad input (a config or data error, also when Ray wrapped
    it), or None for anything else (a bug: its traceback is wanted)."""
    from idrm_ray.data import DataError, format_data_error
    from idrm_ray.data.errors import one_line

    config_error = _find(exc, ConfigError)
    if config_error is not None:
        return f"idrm-ray: config error: {one_line(str(config_error))}"
    data_error = _find(exc, DataError)
    if data_error is None:
        return None
    return f"idrm-ray: data error: {format_data_error(data_error)}"


def _run(command: str, cfg: TrainJobConfig, args: argparse.Namespace | None = None) -> int:
    if command == "tune":
        from idrm_ray.tune import run_sweep

        run_sweep(cfg, [float(x) for x in args.lams.split(",")], [int(x) for x in args.top_ns.split(",")],
                  sweep_dir=args.sweep_dir, max_failures=args.max_failures, use_cache=not args.no_cache,
                  use_asha=not args.no_asha)
        return 0
    if command == "compare":
        from idrm_ray.compare import parse_variants, run_compare

        try:
            variants = parse_variants(args.methods)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        run_compare(cfg, variants, [int(x) for x in args.seeds.split(",")], out_dir=args.compare_dir,
                    eval_sources=args.eval)
        return 0
    if command == "teacher":
        from idrm_ray.teacher.assets import validate_teacher_data

        validate_teacher_data(cfg, needed=True)  # before the driver's imports, as for train
        from idrm_ray.run.driver import run_teacher

        run_teacher(cfg)
        return 0
    from idrm_ray.run.inputs import prepare_inputs

    inputs = prepare_inputs(cfg)  # bad data ends here, before the driver's imports (torch, Ray)
    from idrm_ray.run.driver import run_train

    run_train(cfg, inputs)
    return 0


def _find(exc: BaseException | None, kind: type) -> BaseException | None:
    """The first exception of `kind` in the cause/context chain (Ray wraps remote errors)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, kind):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


if __name__ == "__main__":
    sys.exit(main())
