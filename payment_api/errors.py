"""Error vocabulary shared by the payment API server and its client.

Every error response has the body ``{"error": {"type": ..., "message": ...}}``
with one of the :class:`ErrorType` values, so a client can branch on ``type``
instead of parsing messages.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorType(StrEnum):
    """Machine-readable ``error.type`` values."""

    INVALID_JSON = "invalid_json"
    INVALID_REQUEST = "invalid_request"
    INVALID_IDEMPOTENCY_KEY = "invalid_idempotency_key"
    IDEMPOTENCY_KEY_IN_USE = "idempotency_key_in_use"
    IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    HTTP_ERROR = "http_error"
    INTERNAL = "internal"


def error_body(error_type: ErrorType, message: str) -> dict[str, Any]:
    """Return the JSON body of an error response."""
    return {"error": {"type": str(error_type), "message": message}}


class ApiError(Exception):
    """Raised by request handlers; the server renders it as a JSON error response."""

    def __init__(self, status: int, error_type: ErrorType, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message


class PaymentApiError(Exception):
    """Base class of the errors raised by :class:`payment_api.client.PaymentClient`."""


class RetryableError(PaymentApiError):
    """The outcome of the attempt is unknown or the key is busy; sending it again is allowed.

    Raised for timeouts, dropped connections, ``409`` (the key is being
    processed by another request), ``5xx``, and every answer that is not the
    request's own refusal (payment_api.client ``REQUEST_REFUSED``) or not the
    API's JSON. Whether a retry can charge twice depends only on whether the
    request carries an idempotency key.
    """


class RequestRejected(PaymentApiError):
    """The API refused the request itself (400, 413, 422; for a GET of a page, 404, 405, 410,
    501: it has no such page); retrying cannot help."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(f"{status} {error_type}: {message}")
        self.status = status
        self.error_type = error_type
        self.message = message
