"""The stream processors, one module per stage of the pipeline:

    {prefix}.raw -> ingest -> {prefix}.events -> dedup -> {prefix}.unique
                 \\-> {prefix}.dlq                       -> apply -> {prefix}.applied -> sink -> database

Each module opens with the guarantee it gives and what a crash can do to it.
"""

from .apply import apply_payments
from .dedup import dedup_payments
from .ingest import ingest_payments
from .sink import charge_payments

__all__ = ["ingest_payments", "dedup_payments", "apply_payments", "charge_payments"]
