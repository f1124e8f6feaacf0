"""The one registry of method families: base name (core.method_kind.BASES) -> module. A
method `id+X` is family X with `id.worker_asks` added; `id` alone is id+bt. `SECTIONS` are
the `method` config tree's sections, each declared in its family's module
(`config/method.py` builds `MethodConfig` from them)."""
from __future__ import annotations

from idrm_ray.core.method_kind import method_kind
from idrm_ray.core.settings import BTSettings
from idrm_ray.methods import am, bt, id as interaction, inform, lf, warm
from idrm_ray.methods.base import EnsembleConfig

FAMILIES = {
    "bt": bt,
    "am": am,
    "lf": lf,
    "warm": warm,
    "inform": inform,
}

# method.<key> -> its section, in the tree's order: L_ID's, the families' own, the ensembles'.
SECTIONS = {
    "id": interaction.IDConfig,
    "am": am.AMConfig,
    "lf": lf.LFConfig,
    "warm": warm.WARMConfig,
    "inform": inform.InfoRMConfig,
    "ensemble": EnsembleConfig,
}


def family(method: str):
    """The family module of a method name ('id+lf' -> lf)."""
    return FAMILIES[method_kind(method).base]


def worker_asks(m, method: str) -> dict:
    """WorkerSpec fields of one run of `method` under method config `m`: id_settings,
    bt_settings, use_margin, ib_latent_dim (the family's asks over the defaults, plus L_ID's)."""
    kind = method_kind(method)
    asks = [family(method).worker_asks(m)] + ([interaction.worker_asks(m)] if kind.distills else [])
    out: dict = {"id_settings": None, "use_margin": False, "ib_latent_dim": 0}
    bt_fields = {"kl_form": m.inform.kl_form}  # as before: every run carries it (read with an ib head only)
    for a in asks:
        a = dict(a)
        bt_fields.update(a.pop("bt", {}))
        out.update(a)
    return {**out, "bt_settings": BTSettings(**bt_fields)}
