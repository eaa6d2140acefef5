"""Engine and session for SQLite (embedded default) or PostgreSQL, and schema upgrades."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlmodel import Session

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


# TCP keepalives and a send timeout on both ends of every PostgreSQL connection (libpq's
# for the client, the same GUCs for the server's side): a connection whose peer vanished
# (a cut link, a host gone) fails in about 25 s instead of the kernel's two hours.
PG_KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 25_000,
}
PG_SERVER_KEEPALIVES = {
    "tcp_keepalives_idle": 10,
    "tcp_keepalives_interval": 5,
    "tcp_keepalives_count": 3,
    "tcp_user_timeout": 25_000,
}


def make_engine(url: str, idle_in_transaction_s: float = 0) -> Engine:
    """An engine tuned for the backend: WAL and a busy timeout on SQLite (one writer);
    keepalives on PostgreSQL, and with `idle_in_transaction_s` a server-side limit on a
    session left idle inside a transaction. Workers set it: a worker cut off from the
    database between its INSERT and its COMMIT otherwise holds the row locks of its batch,
    and every other worker that meets those request ids waits on them. The server ends
    such a session, and its locks, instead. A URL's own settings win over these."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    query = make_url(url).query
    connect_args: dict[str, object] = {k: v for k, v in PG_KEEPALIVES.items() if k not in query}
    server = {**PG_SERVER_KEEPALIVES}
    if idle_in_transaction_s:
        server["idle_in_transaction_session_timeout"] = int(idle_in_transaction_s * 1000)
    own = query.get("options", "")
    connect_args["options"] = " ".join(
        [*(f"-c {k}={v}" for k, v in server.items()), *([own] if isinstance(own, str) else own)]
    ).strip()
    return create_engine(
        url, pool_pre_ping=True, pool_size=5, max_overflow=5, connect_args=connect_args
    )


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


@contextmanager
def scratch_database(server_url: str, prefix: str) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database of its own on `server_url` (whose role needs
    CREATEDB), dropped afterwards: each test and benchmark run starts from empty tables."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade(url)
        yield url
    finally:
        make_engine(url).dispose()
        _drop(admin, name)
        admin.dispose()


def _drop(admin: Engine, name: str, attempts: int = 10) -> None:
    """DROP ... WITH (FORCE) terminates the database's sessions; one it may not terminate
    (an autovacuum worker, which belongs to the superuser) makes it fail: wait and retry."""
    from sqlalchemy.exc import ProgrammingError

    for attempt in range(attempts):
        try:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            return
        except ProgrammingError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))


def upgrade(url: str, revision: str = "head") -> None:
    """Apply Alembic migrations up to `revision` (idempotent)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    command.upgrade(cfg, revision)


def current_revision(url: str) -> str | None:
    """The Alembic revision the database is at; None when it was never migrated."""
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
