"""Helpers every component uses: the pipeline, the payment API, the outbox, the lab, infra.

Nothing here imports the project's other packages, so the payment API and the
outbox can use these helpers and stay independent of the pipeline.

* :mod:`common.redact`: credentials out of every printed URL, DSN and error
* :mod:`common.durations`: ``"7d"`` <-> seconds, one syntax for every duration setting
* :mod:`common.readback`: what Kafka really holds (whole topics read ``read_committed``,
  group offsets), read independently of the workers: the lab's and the benchmark's second
  opinion, and the ``dlq`` command's reader
"""
