"""Ray Tune sweep over λ × N (`ray job submit --working-dir . -- python tune/sweep.py [overrides]`).

    python tune/sweep.py                                # reduced grid, tiny models (embedded default)
    python tune/sweep.py --lams 0.2,0.4,0.6,0.8,1.0,1.2 --top-ns 1,2,3,4 --config my.yaml k=v ...
    python tune/sweep.py --no-cache                     # every trial runs the teacher (to compare)
"""
from __future__ import annotations

import argparse
import json

from idrm_ray.config import load_config
from idrm_ray.config.train import TrainJobConfig
from idrm_ray.tune import run_sweep


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config")
    p.add_argument("--preset", default=None)
    p.add_argument("--lams", default="0.4,1.0")
    p.add_argument("--top-ns", default="1,2")
    p.add_argument("--sweep-dir", default=None)
    p.add_argument("--max-failures", type=int, default=1)
    p.add_argument("--no-cache", action="store_true", help="no shared teacher-map cache (each trial runs the teacher)")
    p.add_argument("--no-asha", action="store_true", help="no early stopping")
    p.add_argument("overrides", nargs="*")
    a = p.parse_args(argv)
    cfg = load_config(TrainJobConfig, a.config, a.overrides, preset=a.preset or (None if a.config else "tiny"))
    summary = run_sweep(cfg, [float(x) for x in a.lams.split(",")], [int(x) for x in a.top_ns.split(",")],
                        sweep_dir=a.sweep_dir, max_failures=a.max_failures, use_cache=not a.no_cache,
                        use_asha=not a.no_asha)
    print(json.dumps({"best": summary["best"], "sweep_dir": summary["sweep_dir"],
                      "wall_time_s": summary["wall_time_s"], "asha": summary["asha"]}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
