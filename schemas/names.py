"""Names shared across processes: queues, topics, task names, Redis keys, statuses, exit codes.

Every name another process (or an operator) depends on lives here, once, with a line on
what it is. Settings that can override a name take these as their defaults.
"""

from __future__ import annotations

# Celery task that scores a list of wire requests (one message may carry 1..N requests).
SCORE_TASK = "scoring.score"
# Default Celery queue that scoring requests travel on.
REQUESTS_QUEUE = "score-requests"
# Queue (Redis path) that envelope failures are parked on, with their reason.
DEAD_LETTER_QUEUE = "score-requests.dlq"
# kombu's Redis priority steps: a queue is one list per step, the first named as the queue.
PRIORITY_STEPS = (0, 3, 6, 9)


def queue_lists(queue: str) -> list[str]:
    """The Redis lists that hold `queue`'s messages, one per priority step (kombu's
    `_q_for_pri`): what a depth, a purge or a probe must read, not the queue name alone."""
    return [queue if p == 0 else f"{queue}\x06\x16{p}" for p in PRIORITY_STEPS]


# Redis key prefix of each queue's doorbell: a data-free list that wakes idle workers.
DOORBELL_PREFIX = "_scoring.doorbell."
# Redis hash: delivery tag -> times a worker started scoring the message and never finished
# (it died meanwhile); cleared when scoring finishes and when the message is acknowledged.
UNFINISHED_KEY = "_scoring.unfinished"

# Kafka topics (defaults; each is also a setting).
REQUESTS_TOPIC = "score-requests"
RESULTS_TOPIC = "score-results"
DEAD_LETTER_TOPIC = "score-requests.dlq"
FEEDBACK_TOPIC = "score-feedback"
# Headers on a Kafka dead letter: why it failed and where the original record was.
DLQ_HEADER_REASON = "reason"
DLQ_HEADER_TOPIC = "source-topic"
DLQ_HEADER_PARTITION = "source-partition"
DLQ_HEADER_OFFSET = "source-offset"


# Result statuses written to score_results.status.
STATUS_OK = "ok"
STATUS_INVALID = "invalid"  # the inputs failed the version's schema
STATUS_ERROR = "error"  # the model raised for this request
STATUS_EXPIRED = "expired"  # not scored before its deadline_ms

# Sources written to score_results.source.
SOURCE_KAFKA = "kafka"
SOURCE_REDIS = "redis"
SOURCE_BULK = "bulk"

# Model version lifecycle.
VERSION_STAGED = "staged"
VERSION_ACTIVE = "active"
VERSION_RETIRED = "retired"

# Bulk run lifecycle.
RUN_ENQUEUING = "enqueuing"
RUN_RUNNING = "running"
RUN_DONE = "done"
RUN_FAILED = "failed"

# Exit codes of the `scoring` command.
EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2

# The demo classifier's registered name; the MiniLM text model's name.
DEMO_MODEL = "demo"
TEXT_MODEL = "minilm"
