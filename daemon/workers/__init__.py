"""More than one worker process on one host: a supervisor that owns no call (see plan.py)."""
