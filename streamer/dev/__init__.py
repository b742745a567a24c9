"""Local development services: a real Kafka broker from Maven Central jars, and moto as S3."""
