"""The Ray tools of methods that are more than one training run (ensemble members in
parallel, scoring with their checkpoints, the streamed WARM average), handed to the
method families' procedures (`idrm_ray/methods/`) as `methods.base.Tools` (`tools.py`).
"""
