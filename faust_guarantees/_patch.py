"""The one way a fix replaces an upstream function: on the app's own subclass
(:meth:`faust_guarantees.classes.AppClasses.replace`), or, for the two process-wide fixes,
on the upstream class itself."""

from __future__ import annotations

from typing import Any


def installed(owner: Any, name: str) -> bool:
    """``owner.name`` is a fix already."""
    return getattr(getattr(owner, name, None), "_fixed", False)


def replace(owner: Any, name: str, fixed: Any) -> None:
    """Put ``fixed`` in place of ``owner.name``, marked as a fix and keeping the stock one
    (``_stock``: what :func:`faust_guarantees.guard.fingerprint` reads, and what a fix calls
    through). A second call for the same attribute does nothing."""
    if installed(owner, name):
        return
    fixed._fixed = True
    fixed._stock = getattr(owner, name)
    setattr(owner, name, fixed)
