"""The Ray Data graph that feeds the workers, and Ray at the edge.

    stages.py     the encode and teacher stages (plain classes over numpy batches)
    dataset.py    the graph: pairs -> encode -> teacher actor pool -> exactly-once split
    map_cache.py  teacher maps written once and read back in the teacher stage's columns
    local_run.py  the same stages in this process (`run.local`)
    cluster.py    connecting to Ray, resources, and the TorchTrainer around a worker loop

The rows' columns are `data/records.py`'s; the loop that reads them is `train/`.
"""
