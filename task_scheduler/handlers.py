"""Handlers by task type: the message-queue scheduler's way of declaring work.

``register_handler("download_audio", fn)`` (or ``@register_handler("download_audio")``)
makes ``fn(params)`` the code for every job of ``"type": "handler", "handler":
"download_audio"``. Handlers live in the process (register them at import, before the
scheduler starts); jobs naming them are data and can be persistent, so a restarted
service runs them as soon as its handlers are registered again. A job whose handler
is not registered in the process that runs it fails with that reason.

A process may route handler runs through a work queue (`route_handlers`; the
`task_scheduler.workqueue.HandlerScheduler` does while it runs): a scheduled
handler task then puts an item on the queue and waits for a consumer to run it, so
the run's outcome is still the handler's.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from task_scheduler.errors import TaskError
from task_scheduler.tasks import TaskContext

__all__ = [
    "call_handler",
    "get_handler",
    "register_handler",
    "registered_handlers",
    "route_handlers",
    "unregister_handler",
]

Handler = Callable[..., Any]
H = TypeVar("H", bound=Handler)

Router = Callable[[str, dict[str, Any], TaskContext | None], Any]

_handlers: dict[str, tuple[Handler, bool]] = {}  # task type -> (handler, takes a context)
_lock = threading.Lock()
_router: Router | None = None


def register_handler(task_type: str, handler: H | None = None) -> Any:
    """Register ``handler`` for ``task_type``; without ``handler``, a decorator.
    Registering the same function again is a no-op; another function under a taken
    type is an error (silent replacement hid bugs in the systems users come from)."""
    if not isinstance(task_type, str) or not task_type.strip():
        raise TaskError(f"a handler's task type must be a non-empty string, got {task_type!r}")

    def add(func: H) -> H:
        if not callable(func):
            raise TaskError(f"handler for {task_type!r} must be callable, got {func!r}")
        with _lock:
            existing = _handlers.get(task_type)
            if existing is not None and existing[0] is not func:
                raise TaskError(
                    f"task type {task_type!r} already has a handler ({_name(existing[0])}); "
                    f"unregister_handler({task_type!r}) first to replace it with {_name(func)}"
                )
            _handlers[task_type] = (func, _takes_context(func))
        return func

    return add if handler is None else add(handler)


def unregister_handler(task_type: str) -> None:
    with _lock:
        _handlers.pop(task_type, None)


def get_handler(task_type: str) -> Handler | None:
    entry = _handlers.get(task_type)
    return entry[0] if entry else None


def registered_handlers() -> list[str]:
    return sorted(_handlers)


def route_handlers(router: Router | None) -> None:
    """Send every handler run of this process to ``router(task_type, params,
    context)`` instead of calling the handler in the worker (None: call directly
    again). One router at a time: setting a second one is a TaskError."""
    global _router
    with _lock:
        if router is not None and _router is not None and _router != router:
            raise TaskError("handler runs are already routed through another work queue; stop it first")
        _router = router


def call_handler(
    task_type: str, params: dict[str, Any], context: TaskContext | None = None, *, direct: bool = False
) -> Any:
    """Run the handler of ``task_type`` on ``params``; TaskError when none is
    registered. Goes through the router, if one is set, unless ``direct`` (what the
    router's consumers use)."""
    router = _router
    if router is not None and not direct:
        return router(task_type, params, context)
    entry = _handlers.get(task_type)
    if entry is None:
        known = ", ".join(sorted(_handlers)) or "none"
        raise TaskError(
            f"no handler is registered for task type {task_type!r} in this process "
            f"(registered: {known}); call register_handler({task_type!r}, fn) at import"
        )
    handler, takes_context = entry
    return handler(params, context=context) if takes_context and context is not None else handler(params)


def _takes_context(func: Handler) -> bool:
    try:
        return "context" in inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False


def _name(func: Handler) -> str:
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"
