"""Method families (issue 15 §1): one module per base objective, found through the plain
registry in `registry.py` (base name -> module). A family module holds

    <X>Config        its section of the config tree, `method.<x>` (listed in `registry.SECTIONS`;
                     `config/method.py` builds `MethodConfig` from them)
    worker_asks(m)   what a run of it asks of the worker: BTSettings fields ("bt"), use_margin,
                     the head (ib_latent_dim), id_settings (`id.py`, added to any id+X run)
    run(r)           its driver procedure over a `base.MethodRun`: one run, or ensemble members
                     then flips / margins then one run, or members averaged (WARM)

`id+X` is composed, not copied: X's procedure runs with the `id+X` name, so every run it
trains asks for X's settings and, through `id.worker_asks`, for L_ID. The procedures get
their Ray machinery (train one run, train members, score, average) as `MethodRun.tools`
from `multirun/tools.py`, so this package sits below `multirun` and `run` and imports no Ray;
its sections use `configtree`, the config machinery below it.
"""
