"""What Flower (and any Celery monitor) shows of a scoring task message: a short summary,
never rows of input data.

Celery records `argsrepr` and `kwargsrepr` in each message's headers and its events
carry them; by default they are `repr()` of the arguments, which for a scoring task are
the requests themselves (or a whole bulk chunk, base64). Every publisher of the task
passes these summaries instead.
"""

from __future__ import annotations

from typing import Any

SHOWN_KWARGS = ("model", "model_version", "source", "bulk_run_id", "bulk_chunk", "attempt")


def task_reprs(args: list[Any], kwargs: dict[str, Any]) -> dict[str, str]:
    """`argsrepr` and `kwargsrepr` for `send_task`: how many requests, which model, the
    first request id; the envelope fields that say where the message came from."""
    requests = args[0] if args and isinstance(args[0], list) else []
    if requests:
        first = requests[0] if isinstance(requests[0], dict) else {}
        models = sorted({str(r.get("model")) for r in requests if isinstance(r, dict)})
        shown = f"{len(requests)} requests, model {', '.join(models) or '?'}, first "
        args_repr = f"[{shown}{str(first.get('request_id'))[:64]!r}]"
    else:
        args_repr = "[]"
    fields = {k: kwargs[k] for k in SHOWN_KWARGS if kwargs.get(k) is not None}
    if "chunk" in kwargs:
        fields["chunk"] = f"<{len(kwargs['chunk'])} bytes of Arrow rows>"
    return {"argsrepr": args_repr, "kwargsrepr": repr(fields)}
