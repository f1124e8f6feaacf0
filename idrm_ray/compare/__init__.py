"""`idrm-ray compare`: methods x seeds on the same data, in the layout of the paper's Tables 2/3."""
from idrm_ray.compare.job import run_compare
from idrm_ray.compare.variants import ABLATIONS, DEFAULT_METHODS, parse_variants

__all__ = ["ABLATIONS", "DEFAULT_METHODS", "parse_variants", "run_compare"]
