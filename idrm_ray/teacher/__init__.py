"""The NLI teacher: its files and its fine-tune (`idrm-ray teacher`, step 1 of a distilling run).

    assets.py     a ready teacher, a random tiny one, or the NLI data for a fine-tune
    job.py        the fine-tune's driver (`prepare_teacher`, `finetune_teacher`)
    finetune.py   its worker loop (`nli_train_loop`), run by Ray Train or in this process
"""
