"""Wire models of the payment API, validated with pydantic.

Models are strict: ``"100"``, ``100.0`` or ``true`` are not amounts, and
unknown fields are errors, so a typo such as ``"ammount"`` is reported instead
of silently charging with a default.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
"""Response header (``true``) marking a stored response sent again for a repeated key."""

MAX_AMOUNT = 10**12
"""Largest accepted amount in minor units; anything above is a bug upstream."""


class ChargeRequest(BaseModel):
    """Body of ``POST /v1/charges``."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    amount: Annotated[int, Field(gt=0, le=MAX_AMOUNT, description="minor units, e.g. cents")]
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code")]
    account: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:@-]{1,128}$")]
    reference: Annotated[
        str | None,
        Field(pattern=r"^[\x20-\x7e]{1,255}$",
              description="the caller's own id for what is being paid (e.g. the Kafka event id); "
                          "stored and returned, never used for deduplication: only Idempotency-Key is"),
    ] = None

    def fingerprint(self) -> str:
        """Digest of the validated parameters, compared when an idempotency key is reused.

        It is computed from the parsed model, not the raw bytes, so the same
        charge sent with other whitespace or key order is the same request.
        """
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()


class Charge(BaseModel):
    """A charge as stored and as returned by the API."""

    model_config = ConfigDict(frozen=True)

    id: str
    amount: int
    currency: str
    account: str
    created_at: str
    reference: str | None = None

    @classmethod
    def create(cls, request: ChargeRequest, now: float) -> Charge:
        """Return a new charge with a fresh random id, created at ``now`` (epoch seconds)."""
        return cls(
            id=f"ch_{secrets.token_hex(12)}",
            amount=request.amount,
            currency=request.currency,
            account=request.account,
            created_at=datetime.fromtimestamp(now, UTC).isoformat(timespec="microseconds"),
            reference=request.reference,
        )
