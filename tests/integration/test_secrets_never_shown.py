"""Secrets never shown: a whole system on the real services, logged in with their real
passwords (Redis's `scoring` and `flower` users, the PostgreSQL role, Kafka's SCRAM user)
and Flower behind basic auth: `scoring worker --kafka`, `scoring produce` to Redis and to
Kafka (with invalid requests, so that error columns fill), `scoring bulk --wait` of a
dirty CSV, Flower, `scoring status`, `drift` and `report`, and failures that tend to print
URLs (wrong passwords, one with an unencoded "@", a database port where nothing listens),
each a process of its own with its stdout and stderr in files. No password, nor a wrong
one that was tried, appears (as itself, URL-encoded, or what follows an "@" in it) in
anything they printed or wrote, the HTML report, what Flower shows of the tasks and
workers, the dead letters, the topics or the database's text."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import urllib.parse
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from schemas import names
from schemas.db import make_engine
from schemas.redaction import redact
from schemas.settings import KafkaSettings
from tests.helpers import count_results, demo_requests, free_port, wait_for, worker_env
from tests.integration.kafka_stack import read_topic
from tests.integration.test_flower import flower_broker_url, get  # noqa: F401
from tests.producers.test_bulk_bad_files import dirty_csv

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Wrong passwords tried on purpose: refused, and never echoed either.
WRONG = {
    "wrong Redis password": "wrong-redis-pw-5518",
    "wrong Kafka password": "wrong-kafka-pw-7734",
    "wrong PostgreSQL password": "wrong-pg-pw-2290",
    # Written into a URL as it is: SQLAlchemy splits at the first "@", and the driver names
    # the rest as the host it cannot resolve.
    "wrong PostgreSQL password with an unencoded @": "wr0ng@pg-pw-4471",
}
BULK_ROWS = 400


def password(url: str) -> str:
    return urllib.parse.unquote(urllib.parse.urlsplit(url).password or "")


def with_password(url: str, new: str, encode: bool = True) -> str:
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    netloc = f"{parts.username}:{urllib.parse.quote(new, safe='') if encode else new}@{host}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def with_port(url: str, port: int) -> str:
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc.rsplit(":", 1)[0] + f":{port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def service_passwords() -> dict[str, str]:
    """Every password of the local services (deploy/services keeps them in
    .services/credentials.json), whether this test logs in with it or not."""
    from deploy.services.common import STATE

    path = STATE / "credentials.json"
    known = json.loads(path.read_text()) if path.exists() else {}
    return {f"service credential {key}": str(value) for key, value in known.items()}


class Processes:
    """`scoring ARGV` processes, each with its stdout and stderr in `out/NAME.std*`."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        out.mkdir()

    def start(self, name: str, *argv: str, env: dict[str, str]) -> None:
        stdout = (self.out / f"{name}.stdout").open("wb")
        stderr = (self.out / f"{name}.stderr").open("wb")
        with stdout, stderr:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "scoring.cli", *argv],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
            )

    def wait(self, name: str, timeout: float = 180) -> tuple[int, str, str]:
        code = self.procs[name].wait(timeout)
        return code, *self.output(name)

    def output(self, name: str) -> tuple[str, str]:
        return tuple(  # type: ignore[return-value]
            (self.out / f"{name}.{part}").read_text(errors="replace")
            for part in ("stdout", "stderr")
        )

    def run(
        self, name: str, *argv: str, env: dict[str, str], timeout: float = 180
    ) -> tuple[int, str, str]:
        self.start(name, *argv, env=env)
        return self.wait(name, timeout)

    def stop(self, name: str) -> int:
        proc = self.procs[name]
        if proc.poll() is None:
            proc.terminate()
        try:
            return proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(10)

    def stop_all(self) -> None:
        for name in self.procs:
            self.stop(name)


def request_lines(prefix: str) -> str:
    """JSON lines: valid demo requests, two whose inputs fail the model's schema (an
    `invalid` row with its error), one for a model nobody has (a dead letter), and a line
    that is no JSON (rejected by `scoring produce`)."""
    requests = demo_requests(23, prefix=prefix)
    requests[20]["inputs"].pop("mean_radius")
    requests[21]["inputs"]["mean_texture"] = "not a number"
    requests[22]["model"] = "no-such-model"
    return "\n".join([*(json.dumps(r) for r in requests), "{not json"]) + "\n"


def flower_data(base: str, auth: str, out: Path) -> None:
    """What Flower shows of every task it saw (name, arguments and their reprs, result,
    exception), of the workers and of the broker, into `out/flower-*`, once it has seen
    the Redis producer's messages succeed."""

    def tasks() -> dict[str, dict]:
        status, body = get(base + "/api/tasks", auth)
        return json.loads(body or b"{}") if status == 200 else {}

    def ours_succeeded() -> bool:
        return any(
            "secrets-redis" in str(t.get("args")) and t.get("state") == "SUCCESS"
            for t in tasks().values()
        )

    wait_for(ours_succeeded, timeout=60, every=1)
    fields = ("name", "args", "kwargs", "argsrepr", "kwargsrepr", "result", "exception")
    seen = [{k: t.get(k) for k in fields} for t in tasks().values()]
    assert any("bulk_run_id" in str(t["kwargs"]) for t in seen), "Flower saw no bulk task"
    pages = {
        "tasks.json": json.dumps(seen, indent=1).encode(),
        "workers.json": get(base + "/api/workers?refresh=1", auth)[1],
        "broker.html": get(base + "/broker", auth)[1],
    }
    for page, body in pages.items():
        (out / f"flower-{page}").write_bytes(body)


def check_failures(procs: Processes, shown: Callable[[str], str]) -> None:
    """Each deliberate failure stops with one clear line, and no traceback."""
    expected = {
        # `scoring status` shows what it can read and says why a part cannot be (README).
        "status-wrong-redis": (0, "redis queues: cannot read (AuthenticationError"),
        "produce-wrong-redis": (2, "cannot reach the broker at redis://scoring:**********@"),
        "stream-wrong-kafka": (2, "refused the login of SCORING_KAFKA_USERNAME"),
        "worker-wrong-postgres": (2, "password authentication failed"),
        "worker-postgres-at-sign": (2, "failed to resolve host '**********@"),
        "worker-postgres-port": (2, "cannot reach the database at postgresql+psycopg://"),
        "bulk-sql-at-sign": (2, "failed to resolve host '**********@"),
    }
    for name, (code, line) in expected.items():
        got, out, err = procs.wait(name)
        both = out + err
        assert (got, line in both, "Traceback" in both) == (code, True, False), shown(both)


def database_text(engine: Engine, path: Path) -> dict[str, int]:
    """Every row of every table as text, into `path`; per error or detail column, how
    many rows have one."""
    with engine.connect() as conn:
        catalog = "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        tables = list(conn.execute(text(catalog)).scalars())
        dump = {
            t: list(conn.execute(text(f'SELECT CAST(t AS text) FROM "{t}" t')).scalars())  # nosec B608
            for t in tables
        }
        columns = conn.execute(
            text(
                "SELECT table_name, column_name FROM information_schema.columns "
                "WHERE table_schema = 'public' AND column_name IN ('error', 'detail')"
            )
        ).all()
        filled = {
            f"{t}.{c}": int(
                conn.execute(
                    text(f'SELECT count(*) FROM "{t}" WHERE "{c}" IS NOT NULL')
                ).scalar_one()  # nosec B608
            )
            for t, c in columns
        }
    path.write_text(json.dumps(dump, indent=1, default=str))
    return filled


def leaks(root: Path, needles: dict[str, bytes]) -> list[str]:
    """`what in file` for each needle found in a file under `root` (never the needle)."""
    return [
        f"{what} in {path.relative_to(root)}"
        for path in sorted(p for p in root.rglob("*") if p.is_file())
        for what, needle in needles.items()
        if needle in path.read_bytes()
    ]


def test_no_password_reaches_any_output_log_flower_page_or_table(
    redis_url: str,
    flower_broker_url: str,  # noqa: F811
    pg_url: str,
    kafka_env: dict[str, str],
    kafka_settings: KafkaSettings,
    make_topic,
    make_settings,
    tmp_path: Path,
    demo_artifact: Path,
) -> None:
    s = make_settings(broker={"url": redis_url})
    topics = {k: make_topic(f"secrets-{k}", 1) for k in ("requests", "results", "dlq")}
    env = worker_env(
        redis_url,
        pg_url,
        s,
        SCORING_HEARTBEAT_DIR=str(tmp_path / "beats"),
        SCORING_KAFKA_TOPIC=topics["requests"],
        SCORING_KAFKA_RESULTS_TOPIC=topics["results"],
        SCORING_KAFKA_DLQ_TOPIC=topics["dlq"],
        SCORING_KAFKA_GROUP=f"secrets-{topics['requests']}",
        SCORING_KAFKA_SESSION_TIMEOUT_MS="6000",
        **kafka_env,
    )
    flower_auth = f"ops:flower-{uuid.uuid4().hex[:12]}"
    secrets = {
        "Redis password of scoring": password(redis_url),
        "Redis password of flower": password(flower_broker_url),
        "PostgreSQL password": password(pg_url),
        "Kafka password": kafka_env.get("SCORING_KAFKA_PASSWORD", ""),
        "Flower basic auth password": flower_auth.split(":", 1)[1],
    }
    missing = [what for what, value in secrets.items() if len(value) < 6]
    assert not missing, f"the services should require passwords: {missing}"
    secrets |= {k: v for k, v in service_passwords().items() if v not in secrets.values()}
    secrets |= WRONG

    def shown(output: str) -> str:
        """What an assertion message may print: the output with every secret masked."""
        return redact(output, secrets.values())

    procs = Processes(tmp_path / "out")
    code, _, err = procs.run("register", "models", "register", "demo", str(demo_artifact), env=env)
    assert code == 0, shown(err)
    one_request = tmp_path / "one.jsonl"
    one_request.write_text(json.dumps(demo_requests(1, prefix="never-sent")[0]) + "\n")
    at_sign = with_password(pg_url, WRONG["wrong PostgreSQL password with an unencoded @"], False)
    elsewhere = {"SCORING_REQUESTS_QUEUE": f"{s.broker.requests_queue}-unused"}
    failures = {  # started first: each waits out its retries while the rest goes on
        "status-wrong-redis": (
            ["status", "--no-kafka"],
            {"SCORING_BROKER_URL": with_password(redis_url, WRONG["wrong Redis password"])},
        ),
        "produce-wrong-redis": (
            ["produce", "--redis", "--file", str(one_request)],
            {"SCORING_BROKER_URL": with_password(redis_url, WRONG["wrong Redis password"])},
        ),
        "stream-wrong-kafka": (
            ["stream"],
            {"SCORING_KAFKA_PASSWORD": WRONG["wrong Kafka password"]},
        ),
        "worker-wrong-postgres": (
            ["worker", "--cpu", "1"],
            {
                "SCORING_DATABASE_URL": with_password(pg_url, WRONG["wrong PostgreSQL password"]),
                **elsewhere,
            },
        ),
        "worker-postgres-at-sign": (
            ["worker", "--cpu", "1"],
            {"SCORING_DATABASE_URL": at_sign, **elsewhere},
        ),
        "worker-postgres-port": (
            ["worker", "--cpu", "1"],
            {"SCORING_DATABASE_URL": with_port(pg_url, free_port()), **elsewhere},
        ),
    }
    for name, (argv, changed) in failures.items():
        procs.start(name, *argv, env={**env, **changed})

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    flower_env = {
        **env,
        "SCORING_BROKER_URL": flower_broker_url,
        "SCORING_FLOWER_AUTH": flower_auth,
    }
    procs.start("worker", "worker", "--kafka", "--cpu", "1", env=env)
    procs.start("flower", "flower", f"--port={port}", env=flower_env)
    engine = make_engine(pg_url)
    try:
        beats = tmp_path / "beats"
        wait_for(lambda: any(beats.glob("cpu0*.json")), timeout=150, every=0.5)
        wait_for(lambda: get(base + "/")[0] == 401, timeout=60, every=0.5)

        for source in ("redis", "kafka"):
            lines = tmp_path / f"{source}.jsonl"
            lines.write_text(request_lines(f"secrets-{source}"))
            procs.start(
                f"produce-{source}", "produce", f"--{source}", "--file", str(lines), env=env
            )
        data, expected = dirty_csv(tmp_path / "dirty.csv", rows=BULK_ROWS)
        bulk = ["bulk", str(data), "--model", "demo", "--id-column", "id"]
        bulk += ["--label-column", "label", "--chunk-size", "128", "--wait"]
        procs.start("bulk", *bulk, env=env)
        # A bulk query whose database URL has an unencoded "@": its run fails, with an error.
        query = ["bulk", "--sql", "SELECT 1 AS x", "--from", at_sign, "--model", "demo"]
        procs.start("bulk-sql-at-sign", *query, env=env)
        for source in ("redis", "kafka"):
            code, out, err = procs.wait(f"produce-{source}")
            assert code == names.EXIT_CHECK_FAILED, shown(out + err)  # the line that is no JSON
            assert "23 requests confirmed" in out and "line 24: not JSON" in err, shown(out + err)
        code, out, err = procs.wait("bulk", timeout=240)
        assert code == 0, shown(out + err)
        # 20 + 2 invalid rows from each producer, every bulk row.
        wait_for(lambda: count_results(engine) >= 44 + BULK_ROWS, timeout=120, every=0.5)

        for name, argv in {
            "status-json": ["status", "--json", "--kafka"],
            "status": ["status", "--kafka"],
            "drift": ["drift", "demo"],
            "report": ["report", "--since", "1h", "--out", str(tmp_path / "report.html")],
        }.items():
            procs.start(name, *argv, env=env)
        code, out, err = procs.wait("status-json")
        assert code == 0, shown(out + err)
        traffic = {k: v["statuses"] for k, v in json.loads(out)["traffic"].items()}
        assert traffic["redis"] == traffic["kafka"] == {"ok": 20, "invalid": 2}, traffic
        assert traffic["bulk"] == {"ok": BULK_ROWS - 1, "invalid": 1}, traffic
        code, out, err = procs.wait("status")
        assert code == 0 and "celery workers" in out, shown(out + err)
        code, out, err = procs.wait("drift")
        assert code in (0, 1) and "Traceback" not in err, shown(out + err)
        code, out, err = procs.wait("report")
        assert code == 0 and (tmp_path / "report.html").stat().st_size > 0, shown(out + err)
        flower_data(base, flower_auth, tmp_path / "out")
    except BaseException:
        procs.stop_all()
        raise
    finally:
        for name in ("worker", "flower"):
            if name in procs.procs:
                procs.stop(name)
        redis = s.broker.redis_client()
        dlq = s.broker.dead_letter_queue
        letters = [m for key in names.queue_lists(dlq) for m in redis.lrange(key, 0, -1)]
        (tmp_path / "out" / "redis-dead-letters.txt").write_bytes(b"\n".join(letters))
        redis.delete(*names.queue_lists(s.broker.requests_queue), *names.queue_lists(dlq))

    check_failures(procs, shown)
    client = kafka_settings.client_config()
    for topic, at_least in (("dlq", 1), ("results", 20)):
        records = read_topic(client, topics[topic], at_least, timeout=60)
        values = [r.value or b"" for r in records] + [v for r in records for _, v in r.headers]
        (tmp_path / "out" / f"kafka-{topic}.txt").write_bytes(b"\n".join(values))
    filled = database_text(engine, tmp_path / "out" / "database.txt")
    engine.dispose()
    invalid = 2 + 2 + expected["invalid"]
    assert filled["score_results.error"] == invalid and filled["bulk_runs.error"] == 2, filled

    # Every file this test's processes wrote: outputs, logs, heartbeats, the report, the
    # pages and dumps above. A secret as itself, URL-encoded, or in a basic-auth header.
    needles: dict[str, bytes] = {}
    for what, value in secrets.items():
        needles[what] = value.encode()
        needles[f"{what} (URL-encoded)"] = urllib.parse.quote(value, safe="").encode()
        for i, tail in enumerate(value.split("@")[1:], 1):  # what follows an "@" in it
            needles[f"{what} (after its @ number {i})"] = tail.encode()
    needles["Flower basic auth header"] = base64.b64encode(flower_auth.encode())
    assert len(list((tmp_path / "out").glob("*.std*"))) == 2 * 17
    found = leaks(tmp_path, needles)
    assert not found, found
