"""A private PostgreSQL cluster (initdb + pg_ctl), not Debian's 15/main.

It needs no service manager, listens only on loopback, and `down` cannot touch a cluster
somebody else relies on. The server refuses to run as root, so as root the cluster
belongs to the `postgres` user. Admin work goes through the cluster's own socket as
`postgres`; the application logs in over TCP as `scoring` with a password (scram-sha-256).
Durability is off (fsync, synchronous_commit): the data is throwaway test data.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from deploy.services.common import HOST, STATE, ServiceError, is_root, port_open, run, tail

APP_USER = "scoring"
APP_DB = "scoring"


def bindir(major: str | None = None) -> Path | None:
    """The server programs (initdb, pg_ctl) of `major`, or of the newest installed."""
    roots = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: -int(p.parent.name))
    for candidate in roots:
        if (major is None or candidate.parent.name == major) and (candidate / "initdb").exists():
            return candidate
    found = shutil.which("initdb")
    return Path(found).parent if found and major is None else None


@dataclass
class PostgresServer:
    port: int
    password: str
    base: Path | None = None  # default: .services/pg, or /tmp when postgres cannot reach it
    conf: list[str] = field(default_factory=list)  # more postgresql.conf lines (ssl = on, ...)
    ssl_only: bool = False  # TCP logins over TLS only (pg_hba `hostssl`)

    def __post_init__(self) -> None:
        if self.base is None:
            self.base = _choose_base(self.port)

    @property
    def data(self) -> Path:
        assert self.base is not None
        return self.base / "data"

    @property
    def socket_dir(self) -> Path:
        assert self.base is not None
        return self.base / "run"

    def url(self, database: str = APP_DB) -> str:
        password = quote(self.password, safe="")
        return f"postgresql+psycopg://{APP_USER}:{password}@{HOST}:{self.port}/{database}"

    def _as_postgres(self, cmd: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *cmd] if is_root() else cmd

    def _tool(self, name: str) -> str:
        found = bindir()
        return str(found / name) if found and (found / name).exists() else name

    def answers(self) -> bool:
        if not port_open(self.port):
            return False
        done = run([self._tool("pg_isready"), "-q", "-h", HOST, "-p", str(self.port), "-t", "3"])
        return done.returncode == 0

    def app_login(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(
                host=HOST,
                port=self.port,
                user=APP_USER,
                password=self.password,
                dbname=APP_DB,
                connect_timeout=5,
            ):
                return True
        except psycopg.Error:
            return False

    def _admin(self, sql: str) -> str:
        cmd = [self._tool("psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1"]
        cmd += ["-h", str(self.socket_dir), "-p", str(self.port), "-U", "postgres"]
        done = run(self._as_postgres([*cmd, "-d", "postgres", "-c", sql]), cwd="/")
        if done.returncode != 0:
            raise ServiceError(f"postgres: {sql[:60]}… failed: {done.stderr.strip()}")
        return done.stdout.strip()

    def ensure_app_role(self) -> None:
        """The application role (CREATEDB: tests make a database each) and its database."""
        pw = self.password.replace("'", "''")
        self._admin(
            f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP_USER}') "
            f"THEN CREATE ROLE {APP_USER} LOGIN CREATEDB PASSWORD '{pw}'; "
            f"ELSE ALTER ROLE {APP_USER} LOGIN CREATEDB PASSWORD '{pw}'; END IF; END $$;"
        )
        # Tests drop their databases WITH (FORCE), which must be able to end every session.
        self._admin(f"GRANT pg_signal_backend TO {APP_USER}")
        if self._admin(f"SELECT 1 FROM pg_database WHERE datname = '{APP_DB}'") != "1":
            self._admin(f"CREATE DATABASE {APP_DB} OWNER {APP_USER}")

    def _ours_running(self) -> bool:
        version = self.data / "PG_VERSION"
        if not version.exists():
            return False
        programs = bindir(version.read_text().strip())
        if programs is None:
            return False
        done = run(self._as_postgres([str(programs / "pg_ctl"), "status", "-D", str(self.data)]))
        return done.returncode == 0

    def _init(self, programs: Path) -> None:
        assert self.base is not None
        shutil.rmtree(self.data, ignore_errors=True)
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        if is_root():
            shutil.chown(self.base, "postgres", "postgres")
            shutil.chown(self.socket_dir, "postgres", "postgres")
        self.base.chmod(0o700)
        cmd = [str(programs / "initdb"), "-D", str(self.data), "-U", "postgres", "-E", "UTF8"]
        cmd += ["--no-locale", "--auth-local=trust", "--auth-host=scram-sha-256"]
        done = run(self._as_postgres(cmd), cwd="/")
        if done.returncode != 0:
            raise ServiceError(f"postgres: initdb failed: {done.stderr or done.stdout}")
        conf = self.data / "postgresql.conf"
        with conf.open("a") as fh:
            fh.write(
                "\n# --- deploy/services (test cluster) ---\n"
                f"listen_addresses = '{HOST}'\n"
                f"unix_socket_directories = '{self.socket_dir}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "max_connections = 200\n" + "".join(f"{line}\n" for line in self.conf)
            )
        if self.ssl_only:
            hba = self.data / "pg_hba.conf"
            lines = hba.read_text().splitlines()
            hba.write_text(
                "\n".join(
                    "hostssl" + line[4:] if line.startswith("host ") else line for line in lines
                )
                + "\n"
            )

    def start(self) -> None:
        if self.answers():
            if self._ours_running():
                self.ensure_app_role()
            if not self.app_login():
                raise ServiceError(
                    f"postgres: a server answers on {HOST}:{self.port} but {APP_USER} cannot "
                    f"log in; use a private cluster on another port: "
                    f"SCORING_TEST_PG_PORT={self.port + 1}"
                )
            return
        if port_open(self.port):
            raise ServiceError(f"postgres: port {self.port} is taken by something else")
        version = self.data / "PG_VERSION"
        programs = bindir(version.read_text().strip()) if version.exists() else bindir()
        if programs is None:
            raise ServiceError("postgres: not installed (deploy/install-packages.sh)")
        if not version.exists():
            self._init(programs)
        log_file = self.data.parent / "postgres.log"
        cmd = [str(programs / "pg_ctl"), "start", "-D", str(self.data), "-l", str(log_file)]
        cmd += ["-w", "-t", "60", "-o", f"-p {self.port} -c listen_addresses={HOST}"]
        done = run(self._as_postgres(cmd), cwd="/")
        if done.returncode != 0 or not self.answers():
            raise ServiceError(f"postgres: pg_ctl start failed{tail(log_file)}")
        self.ensure_app_role()
        if not self.app_login():
            raise ServiceError(f"postgres: {APP_USER} cannot log in over TCP{tail(log_file)}")

    def stop(self, mode: str = "fast") -> None:
        """Stop our cluster (`mode` fast: sessions rolled back; immediate: like a crash)."""
        if not self._ours_running():
            return
        programs = bindir((self.data / "PG_VERSION").read_text().strip())
        assert programs is not None
        cmd = [str(programs / "pg_ctl"), "stop", "-D", str(self.data), "-m", mode, "-w"]
        run(self._as_postgres(cmd), cwd="/")


def _choose_base(port: int) -> Path:
    """.services/pg unless the `postgres` user cannot reach it (a checkout under a private
    home) or the socket path would be too long for a unix socket: then /tmp. Remembered."""
    record = STATE / "pg.base"
    if record.exists():
        return Path(record.read_text().strip())
    STATE.mkdir(parents=True, exist_ok=True)
    base = STATE / "pg"
    if is_root():
        STATE.chmod(0o755)
        if run(["runuser", "-u", "postgres", "--", "test", "-x", str(STATE)]).returncode:
            base = Path(f"/tmp/scoring-services-pg-{port}")
    if len(str(base)) > 80:
        base = Path(f"/tmp/scoring-services-pg-{port}")
    record.write_text(str(base))
    os.makedirs(base, exist_ok=True)
    return base
