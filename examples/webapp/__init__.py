"""A FastAPI app submitting graftq jobs: `main.py` serves, `jobs.py` is what workers run."""
