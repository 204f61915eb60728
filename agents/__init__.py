"""The stream processors, one module per stage of the pipeline:

    {prefix}.raw -> dedup (validate, drop repeated ids) -> {prefix}.unique -> apply -> {prefix}.applied -> sink -> database
                 \\-> {prefix}.dlq    \\-> {prefix}.events (a record outside its id's partition) -> dedup

Each module opens with the guarantee it gives and what a crash can do to it, and declares
its agent on the app when imported. Importing this package declares nothing: the entry point
(``streams_app``) imports the module of each stage the worker runs (setting ``STAGES``).
"""
