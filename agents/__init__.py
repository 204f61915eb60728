"""The stream processors, one module per stage of the pipeline:

    {prefix}.raw -> dedup (validate, drop repeated ids) -> {prefix}.unique -> apply -> {prefix}.applied -> sink -> database
                 \\-> {prefix}.dlq    \\-> {prefix}.events (a record outside its id's partition) -> dedup

Each module opens with the guarantee it gives and what a crash can do to it; its
``register(app, topics, tables, processing)`` declares the stage's agent on the app. Importing
declares nothing: the entry point (``streams_app._build``) registers each stage the worker runs
(setting ``STAGES``).
"""
