"""streamer: multi-tenant audit-log streaming from Kafka to S3 and REST log providers."""

__version__ = "0.1.0"
