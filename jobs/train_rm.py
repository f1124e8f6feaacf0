"""`ray job submit` entry point for reward-model training (same code as `idrm-ray train`).

    ray job submit --address http://<head>:8265 --working-dir . -- \
        python jobs/train_rm.py --config jobs/configs/llama3_8b_hh.yaml run.name=hh-id

Re-submitting with the same run.name and run.storage_path resumes from the latest checkpoint.
"""
import sys

from idrm_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
