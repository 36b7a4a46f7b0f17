"""The service's HTTP face: a JSON API, Prometheus metrics and a dashboard, served
from the service's own process by the standard library (`server.py`).

Everything shown is read through `task_scheduler.monitoring`, the functions the CLI
prints, so the CLI, the API and the dashboard never disagree. This module only holds
the ``http`` config section, so that loading a config imports no HTTP code.

Security: the server binds to 127.0.0.1 by default. Reads (GET) need no token: put
a reverse proxy with authentication in front before exposing the port, since run
output is visible. Changes (POST trigger/pause/resume) need ``Authorization: Bearer
<http.token>``; with no token configured they are refused, and binding to any
address other than loopback without a token is a config error.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from task_scheduler.validation import check

__all__ = ["HttpConfig", "check_http", "is_loopback"]


@dataclass
class HttpConfig:
    """The ``http`` config section. The token may come from the environment
    (``TASK_SCHEDULER__HTTP__TOKEN``); it is never logged."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 8080  # 0: any free port (the log says which)
    token: str | None = None


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_http(settings: HttpConfig, source: str | None) -> None:
    """Raise ConfigError naming the key for a bad ``http`` section."""
    check(0 <= settings.port <= 65535, "must be a port number (0-65535)", source=source, key="http.port")
    check(settings.token is None or bool(settings.token.strip()), "must not be empty (leave it out: null)",
          source=source, key="http.token")  # fmt: skip
    check(
        not settings.enabled or settings.token is not None or is_loopback(settings.host),
        f"{settings.host!r} is not a loopback address: set http.token (or TASK_SCHEDULER__HTTP__TOKEN) "
        "before serving the API to the network",
        source=source,
        key="http.host",
    )
