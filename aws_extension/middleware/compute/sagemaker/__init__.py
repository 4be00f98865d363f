"""Compute on SageMaker: endpoints (endpoints.py) and asynchronous jobs (compute.py, jobs.py, notifications.py)."""
