#!/usr/bin/env python3
"""Heartbeat: append one JSON line with host vitals to DATA_DIR/heartbeat.jsonl.

Run by the scheduler (it sets TASK_SCHEDULER_DATA_DIR); by hand it writes to ./data.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil


def main() -> int:
    data_dir = Path(os.environ.get("TASK_SCHEDULER_DATA_DIR", "data"))
    data_dir.mkdir(parents=True, exist_ok=True)
    memory = psutil.virtual_memory()
    beat = {
        "time": datetime.now(UTC).isoformat(),
        "host": socket.gethostname(),
        "run_id": os.environ.get("TASK_SCHEDULER_RUN_ID"),
        "uptime_seconds": round(time.time() - psutil.boot_time()),
        "cpu_percent": psutil.cpu_percent(interval=0.2),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "memory_percent": memory.percent,
        "disk_percent": psutil.disk_usage(str(data_dir.resolve().anchor)).percent,
        "processes": len(psutil.pids()),
    }
    with (data_dir / "heartbeat.jsonl").open("a", encoding="utf-8") as stream:
        stream.write(json.dumps(beat) + "\n")
    print(f"heartbeat ok: cpu {beat['cpu_percent']}% mem {beat['memory_percent']}% load {beat['load_average'][0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
