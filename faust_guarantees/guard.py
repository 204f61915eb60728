"""Fixes run only on the code they were verified on.

Several fixes replace upstream functions with edited copies of their bodies; a same-named
change upstream would silently undo or break them. So each fix names the upstream
functions it replaces or relies on (its module's ``UPSTREAM``) with a fingerprint of their
source as verified, and :func:`faust_guarantees.install` refuses another faust-streaming or
aiokafka version, or a changed function, naming the fixes to re-verify.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from .fixes import BY_NAME

#: The library versions every fix was verified on (the lab's matrix, the regression tests).
VERIFIED_VERSIONS: Mapping[str, str] = {"faust": "0.15.3", "aiokafka": "0.14.0"}

#: How each library is named to a user (its distribution name).
_DISTRIBUTION = {"faust": "faust-streaming"}


class UnverifiedUpstream(RuntimeError):
    """The installed faust-streaming or aiokafka is not the code the fixes were verified on;
    ``problems`` has one line per library version and per changed function, each naming
    the fixes it concerns."""

    def __init__(self, problems: list[str], hint: str | None = None) -> None:
        self.problems = problems
        super().__init__(
            "the Faust fixes were not verified on the installed libraries:\n"
            + "\n".join(f"  - {p}" for p in problems)
            + "\n" + (hint or "Re-verify them and record the new fingerprints "
                      "(faust_guarantees.current_fingerprints()); or leave those fixes out "
                      "(install(app, fixes=...)); or run anyway (install(app, on_unverified='warn'))."))


def upstream(fix: str) -> Mapping[str, str]:
    """The upstream targets of ``fix`` ("module:Class.attribute", or a module) and their
    verified fingerprints."""
    return BY_NAME[fix].UPSTREAM


def fingerprint(target: str) -> str:
    """The first 12 hex digits of the SHA-256 of ``target``'s stock source (the stock
    one even where a fix replaced it in this process); "no source" if it has none."""
    module, _, attribute = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in filter(None, attribute.split(".")):
        obj = getattr(obj, part)
    while getattr(obj, "_stock", None) is not None:
        obj = obj._stock
    if isinstance(obj, property):  # a property's source is its getter's
        obj = obj.fget
    try:
        source = inspect.getsource(obj)
    except (OSError, TypeError):
        return "no source"
    return hashlib.sha256(source.encode()).hexdigest()[:12]


def current_fingerprints(fixes: Sequence[str] = tuple(BY_NAME)) -> dict[str, dict[str, str]]:
    """Every fix's ``UPSTREAM`` as the installed libraries have it: what to record once
    re-verified."""
    return {fix: {target: fingerprint(target) for target in upstream(fix)} for fix in fixes}


def installed_versions() -> dict[str, str]:
    import aiokafka
    import faust

    return {"faust": faust.__version__, "aiokafka": aiokafka.__version__}


def unverified(enabled: Sequence[str], versions: Mapping[str, str] | None = None) -> list[str]:
    """What differs from the code the enabled fixes were verified on, one line per library
    version and per changed upstream function, each naming the fixes it concerns."""
    versions = installed_versions() if versions is None else versions
    problems = []
    for library, verified in VERIFIED_VERSIONS.items():
        found = versions.get(library)
        concerned = [fix for fix in enabled if any(t.split(".")[0] == library for t in upstream(fix))]
        if found != verified and concerned:
            problems.append(f"{_DISTRIBUTION.get(library, library)} {found} is installed, the fixes were "
                            f"verified on {verified}: re-verify {', '.join(concerned)}")
    for fix in enabled:
        for target, recorded in upstream(fix).items():
            try:
                found_print = fingerprint(target)
            except (ImportError, AttributeError):
                found_print = "missing"
            if found_print != recorded:
                problems.append(f"{fix}: {target} is not the code it was verified on "
                                f"(fingerprint {found_print}, verified {recorded})")
    return problems
