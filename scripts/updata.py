#!/usr/bin/env python3
"""Data upload: ship closed sensor files (past UTC hours) from DATA_DIR/sensors.

With an endpoint (``--url`` or $UPLOAD_URL) each file is POSTed as
application/x-ndjson (``Authorization: Bearer $UPLOAD_TOKEN`` when set; the token is
never printed) and moved to DATA_DIR/uploaded on a 2xx answer. Without an endpoint
the files are moved to DATA_DIR/outbox for another system to pick up, and the script
says so. ``--all`` also takes the current hour's file. Exit code 1 if any upload failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from pathlib import Path


def _safe(url: str) -> str:
    """The URL without credentials, for messages."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def upload(path: Path, url: str, token: str | None, timeout: float) -> None:
    request = urllib.request.Request(url, data=path.read_bytes(), method="POST")
    request.add_header("Content-Type", "application/x-ndjson")
    request.add_header("X-File-Name", path.name)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        if not 200 <= response.status < 300:
            raise urllib.error.HTTPError(url, response.status, response.reason, response.headers, None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("UPLOAD_URL"), help="HTTP endpoint (default $UPLOAD_URL)")
    parser.add_argument("--all", action="store_true", help="include the current hour's file")
    parser.add_argument("--timeout", type=float, default=30.0)
    options = parser.parse_args(argv)

    data_dir = Path(os.environ.get("TASK_SCHEDULER_DATA_DIR", "data"))
    sensors = data_dir / "sensors"
    current = f"sensors-{datetime.now(UTC):%Y%m%d%H}.jsonl"
    files = sorted(p for p in sensors.glob("sensors-*.jsonl") if options.all or p.name != current)
    if not files:
        print(f"nothing to upload in {sensors}")
        return 0
    if not options.url:
        outbox = data_dir / "outbox"
        outbox.mkdir(parents=True, exist_ok=True)
        for path in files:
            path.rename(outbox / path.name)
        print(f"no upload endpoint configured (set UPLOAD_URL); moved {len(files)} file(s) to {outbox}")
        return 0
    uploaded_dir = data_dir / "uploaded"
    uploaded_dir.mkdir(parents=True, exist_ok=True)
    failures = 0
    for path in files:
        try:
            upload(path, options.url, os.environ.get("UPLOAD_TOKEN"), options.timeout)
        except (OSError, urllib.error.URLError) as exc:
            failures += 1
            print(f"upload of {path.name} to {_safe(options.url)} failed: {exc}", file=sys.stderr)
            continue
        path.rename(uploaded_dir / path.name)
        print(f"uploaded {path.name} to {_safe(options.url)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
