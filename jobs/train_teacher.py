"""`ray job submit` entry point for the NLI teacher fine-tune (same code as `idrm-ray teacher`).

    ray job submit --working-dir . -- python jobs/train_teacher.py --config jobs/configs/llama3_8b_hh.yaml
"""
import sys

from idrm_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["teacher", *sys.argv[1:]]))
