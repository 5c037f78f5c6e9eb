"""Callables: signatures, references, tracing and isolated execution (app.execute, no Celery)."""
