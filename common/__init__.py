"""Helpers every component uses: the pipeline, the payment API, the outbox, the lab, infra.

Nothing here imports the project's other packages (importing ``streams_app``
builds the Faust app from the environment), so the payment API and the
outbox can use these helpers and stay independent of the pipeline.

* :mod:`common.redact`: credentials out of every printed URL, DSN and error
* :mod:`common.durations`: ``"7d"`` <-> seconds, one syntax for every duration setting
"""
