"""`ray job submit` entry point for the method comparison (same code as `idrm-ray compare`).

    ray job submit --address http://<head>:8265 --working-dir . -- \
        python jobs/compare.py --config jobs/configs/llama3_8b_hh.yaml --methods all,ablations --seeds 0,1,2

Writes table.md / table.csv / accuracy.png (the paper's Tables 2/3 layout) in the compare folder.
"""
import sys

from idrm_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["compare", *sys.argv[1:]]))
