"""Local services started for you: Kafka (and PostgreSQL elsewhere)."""
