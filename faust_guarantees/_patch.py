"""The one way a fix replaces an upstream function."""

from __future__ import annotations

import warnings
from typing import Any

from faust.exceptions import AlreadyConfiguredWarning


def installed(owner: Any, name: str) -> bool:
    """``owner.name`` is a fix already (installed once per process)."""
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


def override(app: Any, setting: str, built: str, name: str, fixed: Any) -> bool:
    """Give ``app`` alone a subclass of its ``setting`` class (an App setting such as
    ``Router`` or ``TableManager``: Faust's extension point) with ``fixed`` in place of
    ``name``. True if done; False if the app has built that component already (``built``:
    the app attribute that caches it): then it is replaced on the class, for every app of
    the process, and the caller is told so."""
    cls = getattr(app.conf, setting)
    if built in app.__dict__:
        replace(cls, name, fixed)
        return False
    fixed._fixed = True
    fixed._stock = getattr(cls, name)
    with warnings.catch_warnings():
        # Faust warns that the setting "was already used": read here, not used (not built).
        warnings.simplefilter("ignore", AlreadyConfiguredWarning)
        setattr(app.conf, setting, type(f"{cls.__name__}WithFixes", (cls,), {name: fixed}))
    return True
