"""`idrm_ray.local_ray`: every worker of a local Ray knows its own cluster (RAY_ADDRESS), also
actors created with a runtime env of their own, as Ray Train V2 creates its controller (whose
placement-group cleaner otherwise asks whichever Ray started last on the machine)."""
from __future__ import annotations

import ray


@ray.remote
def _address() -> tuple[str | None, str]:
    import os

    from ray._private import services

    return os.environ.get("RAY_ADDRESS"), services.canonicalize_bootstrap_address_or_die(None)


@ray.remote
class _Probe:
    def address(self) -> tuple[str | None, str]:
        return ray.get(_address.remote())  # a task started by an actor: as the cleaner is


def test_workers_are_pinned_to_their_own_cluster(ray_session):
    gcs = ray.get_runtime_context().gcs_address
    assert ray.get(_address.remote()) == (gcs, gcs)
    probe = _Probe.options(runtime_env={"env_vars": {"IDRM_PROBE": "1"}}).remote()
    assert ray.get(probe.address.remote()) == (gcs, gcs)
