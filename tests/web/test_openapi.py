"""docs/openapi.json against the running service: every documented path and method
answers with a documented status, and its JSON matches the documented schema; every
route the server has is documented."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest

from task_scheduler.web.server import _routes
from tests.conftest import ROOT
from tests.web.conftest import TOKEN, WebService, finished_runs, request

pytestmark = pytest.mark.integration

SPEC = json.loads((ROOT / "docs" / "openapi.json").read_text())
_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def validate(schema: dict[str, Any], value: Any, where: str = "$") -> None:
    """The JSON Schema subset the spec uses: $ref, allOf, type (one or a list),
    enum, required, properties, items, minimum/maximum, format date-time."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        validate(SPEC["components"]["schemas"][name], value, where)
        return
    for part in schema.get("allOf", []):
        validate(part, value, where)
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        assert any(_is(kind, value) for kind in types), f"{where}: {value!r} is not {types}"
    if "enum" in schema:
        assert value in schema["enum"], f"{where}: {value!r} not in {schema['enum']}"
    if isinstance(value, dict):
        missing = set(schema.get("required", [])) - set(value)
        assert not missing, f"{where}: missing {sorted(missing)}"
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                validate(sub, value[key], f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            validate(schema["items"], item, f"{where}[{index}]")
    if schema.get("format") == "date-time" and isinstance(value, str):
        datetime.fromisoformat(value)


def _is(kind: str, value: Any) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _TYPES[kind])


def _cases(run_id: str) -> list[tuple[str, str, str, str | None, int]]:
    """(method, documented path, concrete path, token, expected status)."""
    return [
        ("get", "/healthz", "/healthz", None, 200),
        ("get", "/readyz", "/readyz", None, 200),
        ("get", "/api/status", "/api/status", None, 200),
        ("get", "/api/tasks", "/api/tasks", None, 200),
        ("get", "/api/tasks/{task_id}", "/api/tasks/hello?recent=2", None, 200),
        ("get", "/api/tasks/{task_id}", "/api/tasks/no-such-task", None, 404),
        ("get", "/api/tasks/{task_id}", "/api/tasks/hello?recent=0", None, 400),
        ("post", "/api/tasks/{task_id}/trigger", "/api/tasks/hello/trigger", TOKEN, 202),
        ("post", "/api/tasks/{task_id}/trigger", "/api/tasks/hello/trigger", None, 401),
        ("post", "/api/tasks/{task_id}/trigger", "/api/tasks/hello/trigger", "wrong", 403),
        ("post", "/api/tasks/{task_id}/trigger", "/api/tasks/no-such-task/trigger", TOKEN, 404),
        ("post", "/api/tasks/{task_id}/pause", "/api/tasks/pausable/pause", TOKEN, 200),
        ("post", "/api/tasks/{task_id}/pause", "/api/tasks/pausable/pause", None, 401),
        ("post", "/api/tasks/{task_id}/resume", "/api/tasks/pausable/resume", TOKEN, 200),
        ("post", "/api/tasks/{task_id}/resume", "/api/tasks/pausable/resume", "wrong", 403),
        ("get", "/api/runs", "/api/runs?task=hello&state=succeeded&limit=5", None, 200),
        ("get", "/api/runs", "/api/runs", None, 200),
        ("get", "/api/runs", "/api/runs?state=nonsense", None, 400),
        ("get", "/api/runs", "/api/runs?task=no-such-task", None, 404),
        ("get", "/api/runs/{run_id}", f"/api/runs/{run_id}", None, 200),
        ("get", "/api/runs/{run_id}", "/api/runs/ffffffffffffffff", None, 404),
        ("get", "/metrics", "/metrics", None, 200),
        ("get", "/", "/?q=hel&page=1", None, 200),
        ("get", "/tasks/{task_id}", "/tasks/hello", None, 200),
        ("get", "/tasks/{task_id}", "/tasks/no-such-task", None, 404),
        ("get", "/runs/{run_id}", f"/runs/{run_id}", None, 200),
        ("get", "/runs/{run_id}", "/runs/ffffffffffffffff", None, 404),
        ("get", "/static/{name}", "/static/dashboard.css", None, 200),
        ("get", "/static/{name}", "/static/dashboard.js", None, 200),
        ("get", "/static/{name}", "/static/favicon.svg", None, 200),
        ("get", "/static/{name}", "/static/secrets.txt", None, 404),
    ]


def test_every_documented_operation_answers_as_documented(web: WebService) -> None:
    run_id = finished_runs(web, "hello")[0]["run_id"]
    cases = _cases(run_id)
    documented = {(method, path) for path, item in SPEC["paths"].items() for method in item}
    exercised = {(method, path) for method, path, _, _, status in cases if 200 <= status < 300}
    assert documented == exercised, documented ^ exercised
    for method, path, concrete, token, expected in cases:
        answer = request(web.url + concrete, method.upper(), token)
        label = f"{method.upper()} {concrete}"
        assert answer.status == expected, (label, answer.status, answer.body[:300])
        responses = SPEC["paths"][path][method]["responses"]
        assert str(answer.status) in responses, f"{label}: {answer.status} is not documented"
        content = responses[str(answer.status)]["content"]
        media = answer.headers["Content-Type"].split(";")[0]
        assert media in content, f"{label}: {media} is not documented ({list(content)})"
        if media == "application/json":
            validate(content[media]["schema"], answer.json(), label)


def test_every_route_of_the_server_is_documented() -> None:
    routes = {(method.lower(), pattern) for method, pattern in _routes()}
    documented = {
        (method, "/".join("{}" if part.startswith("{") else part for part in path.split("/")))
        for path, item in SPEC["paths"].items()
        for method in item
    }
    assert routes == documented, routes ^ documented


def test_the_spec_is_well_formed() -> None:
    assert SPEC["openapi"].startswith("3.1")
    for path, item in SPEC["paths"].items():
        for method, operation in item.items():
            assert operation["responses"], (method, path)
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path":
                    assert "{" + parameter["name"] + "}" in path, (path, parameter)
            if method == "post":
                assert operation["security"] == [{"bearer": []}]
                assert {"401", "403"} <= set(operation["responses"])
