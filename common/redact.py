"""Credentials out of everything the project prints: one masking function, :func:`mask_url`.

Connection strings carry passwords in three forms, and all three are masked
wherever they occur in a text:

* URL userinfo: ``postgresql://user:secret@host:5433/db`` ->
  ``postgresql://user:***@host:5433/db`` (also ``http://``, ``kafka://``, IPv6
  hosts; the user name stays: it says which account is meant);
* a query parameter: ``postgresql://host/db?user=u&password=secret``;
* libpq key/value form: ``host=db user=u password=secret`` or
  ``password='with spaces'`` (any key ending in ``password``/``passwd``/``pwd``).

Every place that puts a DSN or URL into a log line, an exception, a CLI table
or a web view passes it through :func:`mask_url` (settings errors and
``show-settings``, the sink's errors and the dashboard, the payment API, the
outbox, the lab, ``infra.postgres``).

Drivers quote what they were given, too: libpq's URI parser echoes the whole
URI for some syntax errors and *fragments* of it for others (``invalid
percent-encoded token: "s3%cret"``), where no pattern can recognise a
password. So :func:`mask_url` also takes the DSNs the text may quote and
removes their passwords literally, and :func:`masked_errors` wraps a
connection attempt: an exception whose message quotes a credential is
re-raised as the same type with the message masked and WITHOUT the original
chained (a traceback prints the whole chain).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import unquote, urlsplit

MASK = "***"

#: A known password shorter than this is not replaced out of context: it would
#: garble ordinary words, and a secret that short is no secret.
MIN_LITERAL = 4

_USERINFO = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/?#@:'\"]*):(?P<password>[^\s/?#'\"]*)@"
)
_KEY_VALUE = re.compile(
    r"(?P<key>\b\w*(?:password|passwd|pwd))(?P<eq>\s*=\s*)"
    r"(?P<value>'(?:\\.|[^'\\])*'|(?:\\.|[^\s&'\"\\])+)",
    re.IGNORECASE,
)


def mask_url(text: str, *known: str) -> str:
    """``text`` with every password of a URL or DSN in it replaced by ``***``.

    ``known``: DSNs or URLs whose passwords must not appear in ``text`` even
    outside a recognisable URL (a driver's error message quoting a fragment).
    A known password that the masked DSN still shows (say, equal to the user
    name) or one shorter than :data:`MIN_LITERAL` is left alone.
    """
    masked = _KEY_VALUE.sub(_mask_value, _USERINFO.sub(_mask_userinfo, text))
    for source in known:
        for password in _passwords(source):
            masked = masked.replace(password, MASK)
    return masked


@contextmanager
def masked_errors(*dsns: str) -> Iterator[None]:
    """Re-raise an exception of the block with credentials masked out of its message.

    The new exception has the same type (callers still catch, say,
    ``psycopg.OperationalError``) and no chained original; an exception whose
    message quotes no credential passes through untouched.
    """
    try:
        yield
    except Exception as exc:
        text = str(exc)
        masked = mask_url(text, *dsns)
        if masked == text:
            raise
        raise _with_message(exc, masked) from None


def _mask_userinfo(match: re.Match[str]) -> str:
    if not match.group("password"):
        return match.group(0)
    return f"{match.group('head')}:{MASK}@"


def _mask_value(match: re.Match[str]) -> str:
    return f"{match.group('key')}{match.group('eq')}{MASK}"


def _passwords(source: str) -> set[str]:
    """The passwords in ``source`` (raw and percent-decoded) worth replacing literally."""
    found: set[str] = set()
    try:
        password = urlsplit(source).password if "://" in source else None
    except ValueError:  # e.g. an unbalanced IPv6 bracket
        password = None
    if password:
        found |= {password, unquote(password)}
    for match in _KEY_VALUE.finditer(source):
        value = match.group("value").strip("'")
        found |= {value, unquote(value)}
    shown = mask_url(source)
    return {p for p in found if len(p) >= MIN_LITERAL and p not in shown and p != MASK}


def _with_message(exc: Exception, message: str) -> Exception:
    """An exception of ``exc``'s type carrying ``message``; RuntimeError if the type refuses."""
    try:
        return type(exc)(message)
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {message}")
