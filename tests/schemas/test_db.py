"""make_engine against the real PostgreSQL: a worker's session left idle inside a
transaction (its peer cut off between INSERT and COMMIT) is ended by the server, and the
row locks it held go with it, so another worker storing the same request ids goes on."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import text

from schemas.db import make_engine

pytestmark = pytest.mark.integration

INSERT = (
    "INSERT INTO score_results (request_id, model_name, model_version, status, source, outputs,"
    " metadata, scored_at) VALUES ('locked-1', 'demo', 1, 'ok', 'redis', '{}', '{}', now())"
    " ON CONFLICT DO NOTHING"
)


def test_worker_sessions_idle_in_a_transaction_are_ended_with_their_locks(pg_url: str) -> None:
    stuck = make_engine(pg_url, idle_in_transaction_s=1)
    other = make_engine(pg_url)
    try:
        with other.connect() as conn:  # not a worker's engine: no limit, keepalives on
            assert conn.execute(text("SHOW idle_in_transaction_session_timeout")).scalar() == "0"
            assert conn.execute(text("SHOW tcp_keepalives_idle")).scalar() == "10"
        conn = stuck.connect()
        assert conn.execute(text("SHOW idle_in_transaction_session_timeout")).scalar() == "1s"
        conn.execute(text(INSERT))  # holds the unique key of locked-1, never commits
        started = time.monotonic()
        with other.begin() as tx:  # waits on that lock until the server ends the session
            tx.execute(text("SET LOCAL lock_timeout = '20s'"))
            tx.execute(text(INSERT))
        waited = time.monotonic() - started
        assert waited < 15, waited
        with other.connect() as check:
            sql = "SELECT count(*) FROM score_results WHERE request_id = 'locked-1'"
            assert check.execute(text(sql)).scalar() == 1
        with pytest.raises(Exception, match="idle-in-transaction|terminat|closed"):
            conn.execute(text("COMMIT"))
        conn.invalidate()
    finally:
        stuck.dispose()
        other.dispose()
