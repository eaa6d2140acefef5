"""TLS on every hop, for real: a throwaway CA signs a server certificate (127.0.0.1 and
localhost), private servers listen with it (redis-server `tls-port`, a PostgreSQL cluster
with `ssl = on` and `hostssl` logins only, a Kafka broker with a SASL_SSL listener), and
one `scoring worker --kafka` scores requests from both sources over TLS: rediss:// with
SCORING_BROKER_SSL_CA, PostgreSQL `sslmode=verify-full` with `sslrootcert`, Kafka SASL_SSL
with SCORING_KAFKA_SSL_CAFILE. Clients that do not trust the CA are refused."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from deploy.services.common import is_root
from deploy.services.kafka_server import BROKER_USER, CLIENT_USER, KafkaServer
from deploy.services.postgres_server import PostgresServer
from deploy.services.redis_server import RedisServer
from schemas.db import upgrade
from schemas.settings import KafkaSettings
from tests.helpers import demo_requests, free_port, run_scoring, wait_for
from tests.integration.kafka_stack import KafkaStack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PASSWORD = "tls-test-pw-7"


@dataclass
class Certs:
    ca: Path
    cert: Path
    key: Path
    bundle: Path  # key + certificate in one PEM file (Kafka's PEM keystore)
    other_ca: Path  # a CA that signed nothing here: trusting it must fail


def make_certs(directory: Path) -> Certs:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def ca(name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return cert, key

    ca_cert, ca_key = ca("scoring test CA")
    other_cert, _ = ca("another CA")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    out = Certs(
        ca=directory / "ca.pem",
        cert=directory / "server.pem",
        key=directory / "server.key",
        bundle=directory / "server-bundle.pem",
        other_ca=directory / "other-ca.pem",
    )
    out.ca.write_bytes(ca_cert.public_bytes(pem))
    out.other_ca.write_bytes(other_cert.public_bytes(pem))
    out.cert.write_bytes(cert.public_bytes(pem))
    out.key.write_bytes(key_pem)
    out.bundle.write_bytes(key_pem + cert.public_bytes(pem))
    for path in (out.key, out.bundle):
        path.chmod(0o600)
    return out


@dataclass
class TlsStack:
    certs: Certs
    redis: RedisServer
    tls_port: int
    pg: PostgresServer
    kafka: KafkaServer
    kafka_tls_port: int

    def broker_url(self) -> str:
        return f"rediss://scoring:{PASSWORD}@127.0.0.1:{self.tls_port}/0"

    def database_url(self, ca: Path | None = None) -> str:
        root = ca or self.certs.ca
        return f"{self.pg.url()}?sslmode=verify-full&sslrootcert={root}"

    def kafka_settings(self, ca: Path | None = None) -> KafkaSettings:
        return KafkaSettings(
            bootstrap=f"127.0.0.1:{self.kafka_tls_port}",
            security_protocol="SASL_SSL",
            sasl_mechanism="SCRAM-SHA-512",
            username=CLIENT_USER,
            password=PASSWORD,
            ssl_cafile=ca or self.certs.ca,
        )


@pytest.fixture(scope="module")
def tls() -> Iterator[TlsStack]:
    base = Path(tempfile.mkdtemp(prefix="scoring-tls-"))
    base.chmod(0o755)  # the `postgres` user reaches its cluster below
    certs = make_certs(base / "certs")
    tls_port = free_port()
    redis = RedisServer(
        free_port(),
        base / "redis",
        {"scoring": PASSWORD},
        extra=[
            f"tls-port {tls_port}",
            f"tls-cert-file {certs.cert}",
            f"tls-key-file {certs.key}",
            f"tls-ca-cert-file {certs.ca}",
            "tls-auth-clients no",
        ],
    )
    # PostgreSQL reads its key as the `postgres` user and wants it private to that user.
    pg_tls = base / "pg-tls"
    pg_tls.mkdir()
    for path in (certs.cert, certs.key):
        shutil.copy(path, pg_tls / path.name)
        if is_root():
            shutil.chown(pg_tls / path.name, "postgres", "postgres")
    (pg_tls / certs.key.name).chmod(0o600)
    pg = PostgresServer(
        free_port(),
        PASSWORD,
        base=base / "pg",
        conf=[
            "ssl = on",
            f"ssl_cert_file = '{pg_tls / certs.cert.name}'",
            f"ssl_key_file = '{pg_tls / certs.key.name}'",
        ],
        ssl_only=True,
    )
    (base / "pg").mkdir()
    kafka_port, kafka_tls_port = free_port(pair=True), free_port()
    sasl = f"SASL_PLAINTEXT://127.0.0.1:{kafka_port}"
    kafka = KafkaServer(
        kafka_port,
        base / "kafka",
        users={CLIENT_USER: PASSWORD, BROKER_USER: "tls-broker-pw-7"},
        extra=[
            f"listeners={sasl},SASL_SSL://127.0.0.1:{kafka_tls_port},"
            f"CONTROLLER://127.0.0.1:{kafka_port + 1}",
            f"advertised.listeners={sasl},SASL_SSL://127.0.0.1:{kafka_tls_port}",
            "listener.name.sasl_ssl.ssl.keystore.type=PEM",
            f"listener.name.sasl_ssl.ssl.keystore.location={certs.bundle}",
            "num.partitions=1",
        ],
    )
    try:
        # The broker's JVM starts first and boots while Redis and PostgreSQL come up.
        kafka._configure()
        kafka._format()
        log_fh = kafka.logfile.open("ab")
        proc = subprocess.Popen(
            kafka.java("kafka.Kafka", str(kafka.directory / "server.properties")),
            cwd=kafka.directory,
            stdout=log_fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log_fh.close()
        kafka.pidfile.write_text(str(proc.pid))
        redis.start()
        pg.start()
        kafka.start()  # waits for the broker above
        yield TlsStack(certs, redis, tls_port, pg, kafka, kafka_tls_port)
    finally:
        kafka.kill()
        redis.kill()
        pg.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


def test_each_server_refuses_a_client_that_does_not_trust_its_ca(tls: TlsStack) -> None:
    import psycopg
    import redis as redis_py

    from schemas.kafka_access import KafkaAccessError, check_kafka
    from schemas.settings import BrokerSettings

    broker = BrokerSettings(url=tls.broker_url(), ssl_ca=tls.certs.ca)
    assert broker.redis_client(socket_timeout=5).ping()
    wrong = BrokerSettings(url=tls.broker_url(), ssl_ca=tls.certs.other_ca)
    with pytest.raises(redis_py.ConnectionError, match="certificate verify failed"):
        wrong.redis_client(socket_timeout=5).ping()

    url = tls.database_url().replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url, connect_timeout=5) as conn:
        assert conn.execute(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        ).fetchone() == (True,)
    plain = url.split("?")[0] + "?sslmode=disable"
    with pytest.raises(psycopg.OperationalError, match="no encryption|hostssl|pg_hba"):
        psycopg.connect(plain, connect_timeout=5)
    other = tls.database_url(tls.certs.other_ca).replace("postgresql+psycopg://", "postgresql://")
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        psycopg.connect(other, connect_timeout=5)

    check_kafka(tls.kafka_settings(), timeout_s=10)
    with pytest.raises(KafkaAccessError, match="SCORING_KAFKA_SSL_CAFILE|Kafka at"):
        check_kafka(tls.kafka_settings(tls.certs.other_ca), timeout_s=4)


def test_requests_are_scored_over_tls_on_every_hop(
    tls: TlsStack, tmp_path: Path, demo_artifact: Path
) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    database_url = tls.database_url()
    upgrade(database_url)
    kafka = tls.kafka_settings()
    suffix = uuid.uuid4().hex[:8]
    stack = KafkaStack(
        kafka=kafka,
        database_url=database_url,
        store=tmp_path / "store",
        logs=tmp_path,
        requests=f"tls-requests-{suffix}",
        results=f"tls-results-{suffix}",
        dlq=f"tls-dlq-{suffix}",
    )
    admin = KafkaAdminClient(**kafka.client_config(), client_id="scoring-tests")
    admin.create_topics([NewTopic(t, 1, 1) for t in (stack.requests, stack.results, stack.dlq)])
    admin.close()
    stack.register_demo(demo_artifact)
    queue = f"score-requests-tls-{suffix}"
    env = {
        **stack.env,
        "SCORING_BROKER_URL": tls.broker_url(),
        "SCORING_BROKER_SSL_CA": str(tls.certs.ca),
        "SCORING_REQUESTS_QUEUE": queue,
        "SCORING_DEAD_LETTER_QUEUE": f"{queue}.dlq",
        "SCORING_WORKER_FLUSH_INTERVAL_S": "0.02",
    }
    assert env["SCORING_KAFKA_SSL_CAFILE"] == str(tls.certs.ca)
    try:
        for source in ("kafka", "redis"):
            lines = "\n".join(json.dumps(r) for r in demo_requests(100, prefix=source))
            sent = run_scoring("produce", f"--{source}", env=env, stdin=lines, timeout=120)
            assert sent.returncode == 0 and "100 requests confirmed" in sent.stdout, sent.stderr
        stack.procs["worker"] = subprocess.Popen(
            [sys.executable, "-m", "scoring.cli", "worker", "--cpu", "1", "--kafka"],
            env=env,
            stdout=(tmp_path / "worker.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        wait_for(lambda: stack.scalar("SELECT count(*) FROM score_results") >= 200, timeout=120)
        by_source = dict(stack.rows("SELECT source, count(*) FROM score_results GROUP BY 1"))
        assert by_source == {"kafka": 100, "redis": 100}
        assert stack.stop("worker") == 0, stack.log("worker")
    finally:
        stack.stop_all()
    assert PASSWORD not in stack.log("worker")
