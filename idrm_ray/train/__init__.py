"""One training worker (the worker side of a run): the loop and what it holds.

    worker.py         the loop, top to bottom (`train_loop_per_worker(config, session)`)
    session.py        who runs it: Ray Train (`RayTrainSession`) or this process (`LocalSession`, `fit_local`)
    spec.py           the values the driver hands it (`WorkerSpec`)
    strategy.py       torch or DeepSpeed (`make_strategy`): wrap, step, save and load; the interface in
                      strategy_base.py, the halves in strategy_torch.py and strategy_deepspeed.py (+ strategy_zero3.py),
                      the only code that touches DeepSpeed (the loop never calls deepspeed)
    ingest.py         stream rows -> micro-batches, synced across ranks
    step_metrics.py   per-step sums, monitor.py  progress and wandb, checkpointing.py  checkpoint layout

Imports no driver code: `stream`, `teacher`, `multirun` and `run` sit above it.
"""
