"""Named crash points: where the lab SIGKILLs a worker; free when none is armed.

An app marks the moments worth a crash (an effect done, its offset not yet committed) with
``crashpoint("orders.after_forward")``. The lab (``python -m lab run --app ... --crash-at``,
and the payments pipeline's own lab) arms one per worker start with

    FAULT_CRASH_AT=orders.after_forward:25     # SIGKILL on the 25th pass

and the worker kills itself exactly there: no ``finally`` block, no flush, no commit, no
shutdown, as in a power cut. That makes a prediction such as "repeated under
at_least_once" certain instead of likely. Unarmed, :data:`crashpoint` is a function that
returns at once.
"""

from __future__ import annotations

import os
import signal
import sys
from collections import Counter
from collections.abc import Callable, Mapping

#: The environment variable that arms a crash point: ``NAME:N`` (SIGKILL on the Nth pass).
ENV = "FAULT_CRASH_AT"
#: What a worker writes to stderr just before it kills itself (the lab counts these).
KILLED_AT = "FAULT: SIGKILL at crash point"

CrashPoint = Callable[[str], None]


def parse(spec: str, known: Mapping[str, str] | None = None) -> tuple[str, int]:
    """``"NAME:N"`` (or ``"NAME"``: the first pass) -> (name, n); with ``known``, the
    name must be one of them."""
    name, _, nth = spec.partition(":")
    if not name or (known is not None and name not in known):
        choices = f"; use one of: {', '.join(sorted(known))}" if known is not None else ""
        raise SystemExit(f"{ENV}={spec!r}: unknown crash point {name!r}{choices}")
    try:
        count = int(nth or "1")
    except ValueError:
        raise SystemExit(f"{ENV}={spec!r}: expected NAME:N with N a whole number") from None
    if count < 1:
        raise SystemExit(f"{ENV}={spec!r}: N counts passes from 1")
    return name, count


def armed(target: str, nth: int) -> CrashPoint:
    passes: Counter[str] = Counter()

    def crashpoint(name: str) -> None:
        if name != target:
            return
        passes[name] += 1
        if passes[name] == nth:
            print(f"{KILLED_AT} {name} (pass {nth})", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    return crashpoint


def disarmed(name: str) -> None:
    return None


def from_environment(known: Mapping[str, str] | None = None) -> CrashPoint:
    """The crash point function :data:`ENV` asks for (``known``: the names the app declares)."""
    spec = os.environ.get(ENV, "")
    return armed(*parse(spec, known)) if spec else disarmed


#: For an app that does not declare its crash points' names.
crashpoint: CrashPoint = from_environment()
