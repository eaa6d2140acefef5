"""Expected failures as one line that says what to do (tracebacks are for `scoring --debug`).

Each check looks at the exception's class by name and module, so that nothing heavy is
imported to explain an error that did not come from it.
"""

from __future__ import annotations

from schemas.redaction import redact, url_password


def explain(exc: BaseException, settings: object | None = None) -> str | None:
    """The one-line message for an expected failure, or None for a bug (show it all)."""
    checks = (
        _settings_error,
        _database_error,
        _broker_error,
        _kafka_access_error,
        _kafka_error,
        _registry_error,
    )
    for check in checks:
        message = check(exc, settings)
        if message:
            return redact(message, _secrets(settings))
    return None


def _classes(exc: BaseException) -> set[str]:
    return {f"{k.__module__}.{k.__name__}" for k in type(exc).__mro__}


def _first_line(exc: BaseException | None) -> str:
    text = str(exc or "").strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _settings_error(exc: BaseException, _: object) -> str | None:
    if "pydantic_core._pydantic_core.ValidationError" not in _classes(exc):
        return None
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
        for e in exc.errors()  # type: ignore[attr-defined]
    )
    return f"bad setting ({problems}); see the README's Settings table"


def _database_error(exc: BaseException, settings: object) -> str | None:
    classes = _classes(exc)
    if "sqlalchemy.exc.DBAPIError" not in classes:
        return None
    orig = getattr(exc, "orig", None)
    text = str(orig or exc)
    where = _url(settings, "database")
    undefined = orig is not None and "psycopg.errors.UndefinedTable" in _classes(orig)
    if undefined or "no such table" in text:
        return f"database not migrated: run `scoring db upgrade` (SCORING_DATABASE_URL={where})"
    if "sqlalchemy.exc.OperationalError" in classes:
        return f"cannot reach the database at {where}: {_first_line(orig)}"
    return None


def _broker_error(exc: BaseException, settings: object) -> str | None:
    classes = _classes(exc)
    known = (
        "kombu.exceptions.OperationalError",
        "redis.exceptions.ConnectionError",
        "redis.exceptions.AuthenticationError",
        "redis.exceptions.TimeoutError",
    )
    if not any(k in classes for k in known):
        return None
    return f"cannot reach the broker at {_url(settings, 'broker')}: {_first_line(exc)}"


def _kafka_access_error(exc: BaseException, _: object) -> str | None:
    if "schemas.kafka_access.KafkaAccessError" in _classes(exc):
        return str(exc)
    return None


def _kafka_error(exc: BaseException, settings: object) -> str | None:
    if "kafka.errors.KafkaError" not in _classes(exc):
        return None
    kafka = getattr(settings, "kafka", None)
    where = getattr(kafka, "bootstrap", "the configured brokers")
    return f"cannot reach Kafka at {where} (SCORING_KAFKA_BOOTSTRAP): {_first_line(exc)}"


def _registry_error(exc: BaseException, _: object) -> str | None:
    if "workers.runtime.registry.RegistryError" in _classes(exc):
        return str(exc)
    return None


def _url(settings: object, section: str) -> str:
    part = getattr(settings, section, None)
    display = getattr(part, "display_url", None)
    return display() if callable(display) else "the configured URL"


def _secrets(settings: object) -> list[str | None]:
    """Values that must never be printed, whatever an error message embeds."""
    found: list[str | None] = []
    for section in ("database", "broker", "kafka", "flower"):
        part = getattr(settings, section, None)
        for name in ("url", "password", "auth", "sentinel_password"):
            value = getattr(part, name, None)
            getter = getattr(value, "get_secret_value", None)
            if not callable(getter):
                continue
            secret = getter()
            if name == "url":
                found.append(url_password(secret))
            elif name == "auth" and ":" in secret:
                found.append(secret.split(":", 1)[1])
            else:
                found.append(secret)
    return found
