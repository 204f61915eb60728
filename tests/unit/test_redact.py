"""common.redact: no password of a URL or DSN survives a message, and nothing else changes."""

from __future__ import annotations

import psycopg
import pytest

from common.redact import mask_url, masked_errors


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://user:secret@host:5433/db", "postgresql://user:***@host:5433/db"),
        ("postgresql://user@host:5433/db", "postgresql://user@host:5433/db"),
        ("http://127.0.0.1:8081", "http://127.0.0.1:8081"),
        ("sqlite:///payments-sink.db", "sqlite:///payments-sink.db"),
        ("http://api:t0ken@127.0.0.1:8081/v1", "http://api:***@127.0.0.1:8081/v1"),
        ("kafka://k:pw@[2001:db8::1]:9092", "kafka://k:***@[2001:db8::1]:9092"),
        ("postgresql://u:p%40ss@[::1]:5432/db", "postgresql://u:***@[::1]:5432/db"),
        ("postgresql://u:p@ss@host/db", "postgresql://u:***@host/db"),  # an unencoded @ in the password
        ("postgresql://u@h/db?sslmode=require&password=s3cret&x=1", "postgresql://u@h/db?sslmode=require&password=***&x=1"),
        ("host=h user=u password=s3cret dbname=d", "host=h user=u password=*** dbname=d"),
        ("host=h password='a b\\' c' dbname=d", "host=h password=*** dbname=d"),
        ("PGPASSWORD=abc psql", "PGPASSWORD=*** psql"),
        ("SINK_DB='postgresql://u:pw@h/db' is invalid: x", "SINK_DB='postgresql://u:***@h/db' is invalid: x"),
        ("see http://x.org/a@b and https://host:8081/path@x", "see http://x.org/a@b and https://host:8081/path@x"),
    ],
)
def test_mask_url(text: str, expected: str) -> None:
    assert mask_url(text) == expected


def test_known_passwords_are_removed_out_of_context() -> None:
    dsn = "postgresql://u:s3%cret@h/db"
    assert mask_url('invalid percent-encoded token: "s3%cret"', dsn) == 'invalid percent-encoded token: "***"'


def test_a_known_password_the_masked_dsn_shows_anyway_is_left_alone() -> None:
    """payments:payments: the user name is no secret, so words equal to it stay readable."""
    dsn = "postgresql://payments:payments@127.0.0.1:5433/payments"
    text = 'password authentication failed for user "payments"'
    assert mask_url(text, dsn) == text
    assert mask_url(dsn, dsn) == "postgresql://payments:***@127.0.0.1:5433/payments"


def test_psycopg_errors_come_out_masked_same_type_and_unchained() -> None:
    dsn = "postgresql://u:topsecret@[::1:1/db"  # libpq echoes this malformed URI whole
    with pytest.raises(psycopg.Error) as raised, masked_errors(dsn):
        psycopg.connect(dsn)
    assert "topsecret" not in str(raised.value)
    assert "postgresql://u:***@" in str(raised.value)
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_an_error_without_credentials_passes_untouched() -> None:
    error = ValueError("no secret here")
    with pytest.raises(ValueError) as raised, masked_errors("postgresql://u:topsecret@h/db"):
        raise error
    assert raised.value is error
