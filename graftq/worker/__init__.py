"""The Celery adapter: app configuration, the task wrapper, submit/Job, and published functions."""
