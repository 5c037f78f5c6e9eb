"""graftq: typed functions on Celery workers over versioned Pydantic entities in Redis."""

__version__ = "0.1.0"
