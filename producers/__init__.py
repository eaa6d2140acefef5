"""Ways in: a Redis/Celery producer, a Kafka producer, and the bulk file enqueuer."""
