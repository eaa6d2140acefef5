"""Secrets out of text: passwords in URLs, and known secret values, before anything is shown.

Used wherever text may reach a log, a terminal or a database column: settings print their
URLs through `redact_url`, and error messages from clients (which often embed the URL they
failed to reach) through `redact`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "**********"
# scheme://user:password@host -> scheme://user:**********@host (also a password alone).
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*:)(?P<pw>[^@\s/]+)@")


def redact_url(url: str) -> str:
    """The URL with any password masked."""
    return _URL_PASSWORD.sub(lambda m: f"{m.group('head')}{MASK}@", url)


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` with URL passwords masked, and every non-empty value of `secrets` too."""
    out = redact_url(text)
    for secret in secrets:
        if secret and len(secret) >= 3:
            out = out.replace(secret, MASK)
    return out
