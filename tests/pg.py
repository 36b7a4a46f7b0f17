"""PostgreSQL for the tests: a real server, a fresh schema per test.

The server is ``TASK_SCHEDULER_TEST_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``). When it cannot be reached the tests
that need it skip with the reason, or fail when ``TASK_SCHEDULER_REQUIRE_SERVICES=1``
(CI). Each test gets its own schema, dropped (with everything in it) afterwards.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from functools import cache
from typing import Any

import pytest

URL = os.environ.get("TASK_SCHEDULER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
_NAMES = itertools.count()


@cache
def _unreachable() -> str | None:
    """Why the server cannot be used (None when it can); asked once per test session."""
    try:
        import psycopg
    except ImportError as exc:  # the [postgres] extra is not installed
        return f"psycopg is not installed ({exc})"
    try:
        with psycopg.connect(URL, connect_timeout=3) as connection:
            connection.execute("SELECT 1")
    except psycopg.Error as exc:
        return str(exc).strip()
    return None


def require_postgres() -> None:
    problem = _unreachable()
    if problem is None:
        return
    message = f"PostgreSQL not reachable at {URL}: {problem}"
    if os.environ.get("TASK_SCHEDULER_REQUIRE_SERVICES") == "1":
        pytest.fail(message)
    pytest.skip(message)


def execute(query: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Run one statement as the test superuser (autocommit); the rows it returned."""
    import psycopg

    with psycopg.connect(URL, autocommit=True) as connection:
        cursor = connection.execute(query, params)
        return cursor.fetchall() if cursor.description else []


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """The name of a schema no one uses yet (the store creates it); dropped after."""
    require_postgres()
    name = f"ts_test_{os.getpid()}_{next(_NAMES)}"
    execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
    yield name
    execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
