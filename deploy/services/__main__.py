"""`python -m deploy.services up|down|env|status [redis postgres kafka]`.

`up` starts what is not answering and prints the exports, so that
`eval "$(python -m deploy.services up)"` configures a shell; progress goes to stderr.
"""

from __future__ import annotations

import shlex
import sys

from deploy import services
from deploy.services.common import ServiceError


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("up", "down", "env", "status"):
        print(__doc__, file=sys.stderr)
        return 2
    command, wanted = argv[0], tuple(argv[1:]) or services.ALL
    aliases = {"pg": "postgres", "postgresql": "postgres"}
    names = tuple(aliases.get(n, n) for n in wanted)
    try:
        if command == "up":
            _print_env(services.up(names))
        elif command == "env":
            _print_env(services.endpoints(names))
        elif command == "down":
            services.down(names)
        else:
            states = services.status(names)
            for name, answers in states.items():
                print(f"{name:9} {'up' if answers else 'down'}")
            return 0 if all(states.values()) else 1
    except ServiceError as exc:
        print(f"services: ERROR: {exc}", file=sys.stderr)
        return 1
    return 0


def _print_env(endpoints: services.Endpoints) -> None:
    for key, value in endpoints.env().items():
        print(f"export {key}={shlex.quote(value)}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
