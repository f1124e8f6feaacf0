"""`ray job submit` entry point for evaluation (same code as `idrm-ray eval`).

    ray job submit --address http://<head>:8265 --working-dir . -- \
        python jobs/eval.py --checkpoint runs/hh-id/id/checkpoint --data allenai/reward-bench \
        --data RMB_dataset/Pairwise_set --ray --ray-concurrency 4 --ray-gpus 1 --ray-address auto
"""

import sys

from idrm_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
