"""`ray job submit` / local entry point for OpenRLHF PPO against our reward model
(same code as `idrm-ray ppo`): checks, then prints (--dry-run) or submits the
`openrlhf.cli.train_ppo_ray` command as its own Ray job.

    python jobs/ppo.py --config idrm_ray/configs/ppo.yaml policy.model_name_or_path=/m/sft \
        reward.checkpoint=runs/x/model data.prompt_dataset=/d/prompts.jsonl --dry-run
"""
import sys

from idrm_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["ppo", *sys.argv[1:]]))
