"""Job bodies the benchmarks' services import (``bench.jobs:noop``)."""


def noop() -> None:
    """A trivial job."""
