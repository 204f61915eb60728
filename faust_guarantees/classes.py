"""The app's own subclasses of the Faust classes the fixes change.

Faust builds an app's parts from classes it looks up per app: the transport class chosen
by the broker URL (whose ``Consumer``, ``Producer`` and ``TransactionManager`` it builds,
the consumer building its ``AIOKafkaConsumerThread`` and the producer its
``ProducerBuffer``), and App settings (``TableManager``, which builds the ``Recovery``;
``Router``; ``Table`` and the other table classes). :func:`build` gives the app a subclass
of each and points the app at them; the fixes replace methods on those subclasses
(:meth:`AppClasses.replace`), so another app in the same process keeps stock Faust.

Parts the app built before the kit was installed (a topic declared first builds the
transport; a table declared first builds the table manager) are switched to the app's
subclass in place: a subclass adds no state, only replaced methods. Two fixes stay
process-wide, on code no app setting reaches: aiokafka's own ``Fetcher`` (exact-gaps'
seek epochs) and the ``asyncio`` that ``faust.tables.recovery`` sees (recovery-idle-wait).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from ._patch import replace as _replace

#: The App settings naming a table class the app builds its tables from.
TABLE_SETTINGS = ("Table", "GlobalTable", "SetTable", "SetGlobalTable")


class AppClasses:
    """One app's subclasses, by the upstream class each derives from."""

    def __init__(self, label: str = "app") -> None:
        self.label = label
        self._own: dict[type, type] = {}

    def own(self, base: type, **attributes: Any) -> type:
        """The app's subclass of ``base`` (made once), with ``attributes`` set on it."""
        sub = self._own.get(base)
        if sub is None:
            name = f"{base.__name__}Fixed"
            sub = type(name, (base,), {"__module__": __name__, "__qualname__": f"{name}[{self.label}]"})
            self._own[base] = sub
        for attribute, value in attributes.items():
            setattr(sub, attribute, value)
        return sub

    def of(self, upstream: type) -> type:
        """The app's one subclass derived from ``upstream`` (e.g. its consumer class for
        ``faust.transport.consumer.Consumer``)."""
        found = self.derived(upstream)
        if len(found) != 1:
            raise LookupError(f"{len(found)} classes of this app derive from {upstream.__qualname__}")
        return found[0]

    def derived(self, upstream: type) -> list[type]:
        return [sub for sub in self._own.values() if issubclass(sub, upstream)]

    def replace(self, upstream: type, name: str, fixed: Callable[..., Any]) -> None:
        """Put ``fixed`` in place of ``upstream.name`` on each of the app's classes derived
        from ``upstream`` (marked as a fix, the stock one kept: :func:`._patch.replace`)."""
        targets = self.derived(upstream)
        if not targets:
            raise LookupError(f"no class of this app derives from {upstream.__qualname__}")
        for sub in targets:
            _replace(sub, name, fixed)


def standalone() -> AppClasses:
    """Subclasses of the classes the fixes change, for no app (unit tests: the fixed
    methods called on test doubles)."""
    from faust.app.router import Router
    from faust.tables.base import Collection
    from faust.tables.manager import TableManager
    from faust.tables.recovery import Recovery
    from faust.transport.consumer import TransactionManager
    from faust.transport.drivers.aiokafka import (
        AIOKafkaConsumerThread,
        Consumer,
        Producer,
    )
    from faust.transport.producer import ProducerBuffer

    classes = AppClasses("standalone")
    for base in (Consumer, AIOKafkaConsumerThread, Producer, ProducerBuffer, TransactionManager,
                 TableManager, Recovery, Collection, Router):
        classes.own(base)
    return classes


def build(app: Any) -> AppClasses:
    """Give ``app`` its own subclasses and make it build its parts from them."""
    import faust
    from faust.exceptions import AlreadyConfiguredWarning
    from faust.tables.recovery import Recovery
    from faust.transport.drivers import aiokafka as driver
    from faust.transport.producer import ProducerBuffer

    if getattr(app, "_kit_classes", None) is not None:
        return app._kit_classes
    if getattr(app, "started", False):
        raise RuntimeError("faust_guarantees.install(app) must run before the app starts")
    classes = AppClasses(str(app.conf.id))

    # The transport and what it builds.
    transport_class = faust.transport.by_url(app.conf.broker_consumer[0])
    if not issubclass(transport_class, driver.Transport):
        raise ValueError(f"the fixes were verified on Faust's aiokafka transport (kafka://), not "
                         f"{transport_class.__module__}.{transport_class.__qualname__}: set broker='kafka://...'")
    thread = classes.own(driver.AIOKafkaConsumerThread)
    buffer = classes.own(ProducerBuffer)
    consumer = classes.own(transport_class.Consumer, _new_consumer_thread=_consumer_thread(thread))
    producer = classes.own(transport_class.Producer, __init__=_producer_init(transport_class.Producer, buffer))
    transactions = classes.own(transport_class.TransactionManager)
    transport = classes.own(transport_class, Consumer=consumer, Producer=producer, TransactionManager=transactions)
    app._new_transport = lambda: transport(app.conf.broker_consumer, app)
    app._new_producer_transport = lambda: transport(app.conf.broker_producer, app)
    for built, cls in (("_transport", transport), ("_producer_transport", transport),
                       ("_consumer", consumer), ("_producer", producer)):
        part = app.__dict__.get(built)
        if part is not None:
            _adopt(part, cls)
            if built == "_producer":
                _adopt(part.buffer, buffer)
            if built == "_consumer" and part._thread is not None:
                _adopt(part._thread, thread)

    # App settings: the table manager (and the recovery it builds), the router, the tables.
    recovery = classes.own(Recovery)
    own_settings: dict[str, type] = {
        "TableManager": classes.own(app.conf.TableManager,
                                    recovery=_recovery_property(app.conf.TableManager, recovery)),
        "Router": classes.own(app.conf.Router),
    }
    for setting in TABLE_SETTINGS:
        own_settings[setting] = classes.own(getattr(app.conf, setting))
    with warnings.catch_warnings():
        # Faust warns that a setting "was already used": read, not changed behind its back.
        warnings.simplefilter("ignore", AlreadyConfiguredWarning)
        for setting, cls in own_settings.items():
            setattr(app.conf, setting, cls)
    if "tables" in app.__dict__:
        manager = app.__dict__["tables"]
        _adopt(manager, own_settings["TableManager"])
        if manager._recovery is not None:
            _adopt(manager._recovery, recovery)
        for table in manager.values():
            for cls in (own_settings[setting] for setting in TABLE_SETTINGS):
                if type(table) is cls.__bases__[0]:  # the stock class it derives from
                    _adopt(table, cls)
    if "router" in app.__dict__:
        _adopt(app.__dict__["router"], own_settings["Router"])
    app._kit_classes = classes
    return classes


def _adopt(part: Any, cls: type) -> None:
    """Switch a part built from a stock class to the app's subclass of that class."""
    if not isinstance(part, cls):
        if cls.__bases__[0] is not type(part):
            raise TypeError(f"{type(part).__qualname__} is not the class {cls.__qualname__} derives from")
        part.__class__ = cls


def _consumer_thread(thread: type) -> Callable[[Any], Any]:
    def _new_consumer_thread(self: Any) -> Any:
        return thread(self, loop=self.loop, beacon=self.beacon)
    return _new_consumer_thread


def _producer_init(stock: type, buffer: type) -> Callable[..., None]:
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        stock.__init__(self, *args, **kwargs)
        _adopt(self.buffer, buffer)
    return __init__


def _recovery_property(manager: type, recovery: type) -> property:
    stock = manager.recovery

    def get(self: Any) -> Any:
        built = stock.fget(self)
        _adopt(built, recovery)
        return built
    return property(get, doc=stock.__doc__)
