"""Benchmarks of task_scheduler beside APScheduler 3: ``python -m bench``."""
