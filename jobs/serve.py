"""`ray job submit` entry point for the reward server (same code as `idrm-ray serve`):
joins the cluster (server.ray_address=auto) and serves until the job is stopped.

    ray job submit --address http://<head>:8265 --working-dir . -- \
        python jobs/serve.py --checkpoint /shared/runs/x/model server.ray_address=auto \
        --host 0.0.0.0 --token-env IDRM_RM_TOKEN deployment.num_gpus=1

Also precomputes PAR reference rewards: ... --score-references refs.jsonl --out refs.scored.jsonl
"""
import sys

from idrm_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
