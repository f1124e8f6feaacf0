"""The machinery of a config tree, below every tree that uses it (STYLE.md item 6): frozen
dataclasses with a help string per field (`param`, `section`, `require`), typed coercion,
dump and describe (`base.py`); YAML layers, dotted overrides and `derive` (`loader.py`).

It sits below `methods`, so a method family can declare its own config section; the job
trees themselves (and the public `load_config`, `derive`, ...) are `idrm_ray.config`'s.
"""
