"""Deployment files; `deploy.services` runs the local Redis, PostgreSQL and Kafka."""
