"""Keeping secrets out of logs, error messages and status output.

A key "looks like a secret" when its name contains password, passwd, secret, token,
api_key/apikey, credential, private_key or authorization (any case, ``-`` or ``_``). Their values
are replaced by ``***`` in every log line this package writes (``key=value``,
``key: value``, ``"key": "value"``, ``--key value``, ``--key=value``), in config
errors, and in task status; so is the password of a URL (``scheme://user:pw@host``).
In data shown to people (`redact_data`) a ``webhook`` or ``url`` value keeps only its
scheme, host and port (`mask_url`): a webhook's secret is often its path.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["MASK", "is_secret", "mask_url", "mask_values", "redact_args", "redact_data", "redact_text"]

MASK = "***"
_WORDS = r"(?:pass(?:word|wd)?|secret|token|api[_-]?key|credential|private[_-]?key|authorization)"
_SECRET_NAME = re.compile(rf"[\w.-]*{_WORDS}[\w.-]*", re.IGNORECASE)
_VALUE = r"""(?P<value>[^\s"',;&)}\]]+)"""
_PAIR = re.compile(rf"""(?P<key>["']?[\w.-]*{_WORDS}[\w.-]*["']?)(?P<sep>\s*[=:]\s*["']?){_VALUE}""", re.IGNORECASE)
_FLAG = re.compile(rf"(?P<key>(?<!\S)--?[\w.-]*{_WORDS}[\w.-]*)(?P<sep>\s+)(?!-){_VALUE}", re.IGNORECASE)
_URL_KEYS = ("webhook", "url")  # values shown as scheme://host only (see mask_url)
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^/\s:@]+:)(?P<value>[^/\s@]+)(?=@)", re.IGNORECASE)


@functools.lru_cache(maxsize=4096)  # asked for every variable of every script run
def is_secret(name: str) -> bool:
    """Whether a key or flag name looks like it holds a secret."""
    return _SECRET_NAME.fullmatch(name.lstrip("-")) is not None


def redact_text(text: str) -> str:
    """``text`` with the values of secret-looking keys and URL passwords masked."""
    if not text:
        return text
    text = _URL_PASSWORD.sub(lambda m: m.group("head") + MASK, text)
    text = _FLAG.sub(lambda m: f"{m.group('key')}{m.group('sep')}{MASK}", text)
    return _PAIR.sub(lambda m: f"{m.group('key')}{m.group('sep')}{MASK}", text)


def redact_args(args: Sequence[str]) -> list[str]:
    """Command-line arguments with the values of secret-looking flags masked."""
    result: list[str] = []
    hide_next = False
    for arg in args:
        if hide_next:
            result.append(MASK)
            hide_next = False
        elif arg.startswith("-") and "=" in arg and is_secret(arg.split("=", 1)[0]):
            result.append(arg.split("=", 1)[0] + "=" + MASK)
        elif arg.startswith("-") and is_secret(arg):
            result.append(arg)
            hide_next = True
        else:
            result.append(redact_text(arg))
    return result


def redact_data(data: Any, secret_names: Iterable[str] = ()) -> Any:
    """A copy of JSON-like ``data`` with the values of secret-looking keys (and of
    the keys in ``secret_names``) masked, at any depth (a job's ``env``, ``kwargs``,
    ``params``)."""
    names = set(secret_names)
    if isinstance(data, dict):
        return {
            key: MASK
            if value and (key in names or is_secret(str(key)))
            else mask_url(value)
            if str(key) in _URL_KEYS and isinstance(value, str)
            else redact_data(value, names)
            for key, value in data.items()
        }
    if isinstance(data, list):
        return [redact_data(item, names) for item in data]
    return data


def mask_values(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of each secret value replaced by the mask, as CI
    systems mask secrets in job logs. Values shorter than 4 characters are left
    alone (masking every "1" would hide the output, not the secret)."""
    for secret in sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def mask_url(url: str) -> str:
    """A URL as logs may show it: scheme, host and port; the user, password, path and
    query become ``***`` (a webhook's secret is often its path, as in
    ``https://hooks.slack.com/services/T0/B0/XXXX``)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return MASK
    if not parts.scheme or not host:
        return MASK
    host = f"[{host}]" if ":" in host else host
    user = f"{MASK}@" if parts.username or parts.password else ""
    rest = f"/{MASK}" if parts.path.strip("/") or parts.query or parts.fragment else ""
    return f"{parts.scheme}://{user}{host}{port}{rest}"
