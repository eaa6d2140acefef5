"""Secrets out of text: passwords in URLs, and known secret values, before anything is shown.

Used wherever text may reach a log, a terminal or a database column: settings print their
URLs through `redact_url`, and error messages from clients (which often embed the URL they
failed to reach) through `redact`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "**********"
# scheme://user:password@host -> scheme://user:**********@host (also a password alone). The
# password runs to the last "@" before the path: one with an unencoded "@" is masked whole.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*:)(?P<pw>[^\s/]+)@")
# Secrets that no settings object holds, masked by every `redact` of this process.
_KEPT: set[str] = set()


def redact_url(url: str) -> str:
    """The URL with any password masked."""
    return _URL_PASSWORD.sub(lambda m: f"{m.group('head')}{MASK}@", url)


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` with URL passwords masked, and every non-empty value of `secrets` too."""
    out = redact_url(text)
    for secret in [*secrets, *_KEPT]:
        for shown in _as_shown(secret or ""):
            if len(shown) >= 3:
                out = out.replace(shown, MASK)
    return out


def keep_secret(secret: str | None) -> None:
    """Mask `secret` in whatever `redact` returns from now on in this process: for one
    that no settings object holds (`scoring bulk --from URL`'s password)."""
    if secret:
        _KEPT.add(secret)


def url_password(url: str) -> str | None:
    """The password of a URL (decoded), or None."""
    from urllib.parse import unquote, urlsplit

    try:
        password = urlsplit(url).password
    except ValueError:
        return None
    return unquote(password) if password else None


def _as_shown(secret: str) -> list[str]:
    """The secret, and each part after an "@" in it: SQLAlchemy splits a URL's user
    information at its first "@", so the driver names the rest of a password with an
    unencoded "@" as part of the host it cannot resolve."""
    parts = secret.split("@")
    return [secret, *("@".join(parts[i:]) for i in range(1, len(parts)))]
