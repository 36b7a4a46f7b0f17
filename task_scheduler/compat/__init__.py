"""Faces for code written for other schedulers, as thin translations onto
`task_scheduler.TaskScheduler`: `task_scheduler.compat.apscheduler` (APScheduler 3's
``add_job``, triggers, job stores and named instances)."""
