"""Passwords out of text: in URLs (one with an unencoded "@" too), and known values."""

from __future__ import annotations

from schemas.redaction import MASK, redact, redact_url, url_password


def test_a_url_password_is_masked_up_to_the_last_at_before_the_host() -> None:
    assert redact_url("redis://u:p%40ss@h:6379/0") == f"redis://u:{MASK}@h:6379/0"
    assert redact_url("postgresql://u:wr0ng@pg-pw@h:5432/db") == f"postgresql://u:{MASK}@h:5432/db"
    both = "sentinel://:a@h1:26379;sentinel://:b@h2:26379"
    assert redact_url(both) == f"sentinel://:{MASK}@h1:26379;sentinel://:{MASK}@h2:26379"
    assert redact_url("see http://h:8080/x@y and u@example.com") == (
        "see http://h:8080/x@y and u@example.com"
    )


def test_what_a_driver_takes_for_the_host_of_a_password_with_an_at_is_masked() -> None:
    secret = url_password("postgresql+psycopg://u:wr0ng@pg-pw-4471@127.0.0.1/db")
    assert secret == "wr0ng@pg-pw-4471"
    message = "failed to resolve host 'pg-pw-4471@127.0.0.1'"
    assert redact(message, [secret]) == f"failed to resolve host '{MASK}@127.0.0.1'"
