"""Secret masking: what is hidden and what is left readable."""

from __future__ import annotations

import pytest

from task_scheduler.redact import is_secret, redact_args, redact_text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("login password=hunter2 ok", "login password=*** ok"),
        ("DB_PASSWORD: s3cr3t", "DB_PASSWORD: ***"),
        ('{"api_key": "abc123", "x": 1}', '{"api_key": "***", "x": 1}'),
        ("run --token abc --verbose", "run --token *** --verbose"),
        ("--api-key=zzz", "--api-key=***"),
        ("postgres://bob:pw@db.local/app", "postgres://bob:***@db.local/app"),
        ("passwd=a&user=b", "passwd=***&user=b"),
        # left alone: prose and task ids that merely contain a word
        ("the token was rejected", "the token was rejected"),
        ("starting task refresh_token (Refresh)", "starting task refresh_token (Refresh)"),
        ("task tick succeeded in 0.2s", "task tick succeeded in 0.2s"),
    ],
)
def test_redact_text(text: str, expected: str) -> None:
    assert redact_text(text) == expected


def test_redact_args_and_names() -> None:
    assert redact_args(["--token", "abc", "--password=x", "-v", "file"]) == [
        "--token",
        "***",
        "--password=***",
        "-v",
        "file",
    ]
    assert is_secret("API_KEY") and is_secret("--client-secret") and is_secret("db.password")
    assert not is_secret("max_workers") and not is_secret("host")
