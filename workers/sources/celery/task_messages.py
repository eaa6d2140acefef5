"""What a task message must be before Celery's strategy sees it, so that a hand-built one
(a client in another language, see the README's "Sending from other languages") that is
wrong ends as a dead letter with the reason instead of stopping the worker.

kombu passes a body with no content type (or application/data, application/text) through
undecoded, and Celery then unpacks that text as [args, kwargs, embed]; that ValueError, and
the same from a body of the wrong layout or a message without an `id` header, escaped the
event loop and stopped the worker, and the message came back after its lease to stop the
next one. Content types kombu refuses (pickle, YAML, msgpack, text/plain) are left to it:
Celery's on_invalid_task parks them with kombu's reason, before anything is decoded.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from kombu.serialization import TRUSTED_CONTENT

LAYOUT = "[args, kwargs, embed] (Celery message protocol 2): a list, an object, an object or null"


def task_message_problem(
    message: Any, accepted: Collection[str], max_bytes: int | None = None
) -> str | None:
    """Why `message` cannot go to Celery's strategy, or None when it can (or when Celery's
    own checks park it: a refused content type, no `task` header). A body over `max_bytes`
    is refused before anything decodes it."""
    body = message.body
    if max_bytes is not None and isinstance(body, str | bytes) and len(body) > max_bytes:
        return f"message of {len(body)} bytes is over SCORING_MAX_MESSAGE_BYTES ({max_bytes})"
    content_type = message.content_type
    if not content_type:
        return "no content type: the body was not decoded (send content-type application/json)"
    if content_type not in accepted:
        if content_type in TRUSTED_CONTENT:
            return (
                f"content type {content_type} is not accepted: the body was not decoded "
                "(send content-type application/json)"
            )
        return None  # kombu refuses it when Celery decodes it (ContentDisallowed)
    headers = message.headers
    if not isinstance(headers, dict) or "task" not in headers:
        return None  # not protocol 2: Celery parks it as an unknown message
    if not isinstance(headers.get("id"), str) or not headers["id"]:
        return "task message without an id header (a non-empty string)"
    try:
        body = message.decode()
    except Exception as exc:  # noqa: BLE001 - kombu's DecodeError and whatever its codec raised
        return f"undecodable message ({content_type}): {exc}"
    return _layout_problem(body)


def _layout_problem(body: Any) -> str | None:
    if not (isinstance(body, list | tuple) and len(body) == 3):
        return f"task message body is not {LAYOUT}"
    args, kwargs, embed = body
    if not isinstance(args, list | tuple) or not isinstance(kwargs, dict):
        return f"task message body is not {LAYOUT}"
    if embed is not None and not isinstance(embed, dict):
        return f"task message body is not {LAYOUT}"
    enqueued_at = kwargs.get("enqueued_at")
    if enqueued_at is not None and (
        isinstance(enqueued_at, bool) or not isinstance(enqueued_at, int | float)
    ):
        return f"kwargs.enqueued_at is not epoch seconds (a number): {enqueued_at!r:.60}"
    return None
