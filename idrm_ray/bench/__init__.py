"""Benchmarks (CPU, in-process): `python -m idrm_ray.bench.id_step`."""
