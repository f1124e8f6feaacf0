"""This machine's own Ray, started in process (`ray.init(address="local")`), with every one of
its workers pinned to it.

Ray's State API, called with no address inside a worker, finds "the" cluster through
RAY_ADDRESS, else /tmp/ray/ray_current_cluster (the Ray started last on this machine), else any
raylet it can see. Ray Train V2's placement-group cleaner asks it every second whether the run's
controller still lives. Where two local Rays run on one machine (two runs side by side, a test
suite beside a run) it asks the wrong one, hears "no such actor" and removes the live run's
placement group, which kills its train workers. A worker setup hook sets RAY_ADDRESS in every
worker (controllers and the cleaner included: they inherit the job's runtime env) to the GCS
address of the cluster the worker belongs to.
"""
from __future__ import annotations

import os

PIN_HOOK = "idrm_ray.local_ray.pin_address"


def pin_address() -> None:
    """Worker setup hook: this worker's own cluster for every address-less Ray API call."""
    import ray

    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address


def init(**kwargs):
    """`ray.init(address="local", **kwargs)` with the pin in the job's runtime env."""
    import ray

    # The dashboard's module processes get 30 s to start by default: too short on a busy laptop or
    # 2-core machine, where the start then fails ("Module MetricsHead failed to start").
    os.environ.setdefault("RAY_DASHBOARD_SUBPROCESS_MODULE_WAIT_READY_TIMEOUT", "120")
    runtime_env = {**kwargs.pop("runtime_env", {}), "worker_process_setup_hook": PIN_HOOK}
    return ray.init(address="local", runtime_env=runtime_env, **kwargs)
