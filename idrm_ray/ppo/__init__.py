"""OpenRLHF PPO against our reward model: config tree, pre-launch checks, the dotted-flag
`train_ppo_ray` command, and its submission as a Ray job. Nothing imported here."""
