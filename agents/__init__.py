"""The stream processors, one module per stage of the pipeline:

    {prefix}.raw -> dedup (validate, drop repeated ids) -> {prefix}.unique -> apply -> {prefix}.applied -> sink -> database
                 \\-> {prefix}.dlq    \\-> {prefix}.events (a record outside its id's partition) -> dedup

Each module opens with the guarantee it gives and what a crash can do to it.
"""

from .apply import apply_payments
from .dedup import dedup_payments
from .sink import charge_payments

__all__ = ["dedup_payments", "apply_payments", "charge_payments"]
