#!/usr/bin/env python3
"""Sensor data collection: sample what psutil can read on this host (CPU, load,
memory, swap, disk usage and I/O, network I/O, temperatures and fans where the
hardware exposes them, battery) into DATA_DIR/sensors/sensors-YYYYMMDDHH.jsonl,
one line per sample and one file per UTC hour (the upload job ships closed hours).
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil


def sample() -> dict[str, Any]:
    now = datetime.now(UTC)
    memory, swap = psutil.virtual_memory(), psutil.swap_memory()
    reading: dict[str, Any] = {
        "time": now.isoformat(),
        "cpu_percent": psutil.cpu_percent(interval=0.5),
        "cpu_count": psutil.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "memory": {"total": memory.total, "available": memory.available, "percent": memory.percent},
        "swap": {"total": swap.total, "used": swap.used, "percent": swap.percent},
        "disk": {},
    }
    for partition in psutil.disk_partitions(all=False):
        try:
            usage = psutil.disk_usage(partition.mountpoint)
        except OSError:
            continue
        reading["disk"][partition.mountpoint] = {"total": usage.total, "used": usage.used, "percent": usage.percent}
    io = psutil.disk_io_counters()
    if io is not None:
        reading["disk_io"] = {"read_bytes": io.read_bytes, "write_bytes": io.write_bytes}
    net = psutil.net_io_counters()
    reading["network"] = {"bytes_sent": net.bytes_sent, "bytes_recv": net.bytes_recv}
    temperatures = getattr(psutil, "sensors_temperatures", lambda: {})() or {}
    reading["temperatures"] = {
        name: [{"label": t.label, "current": t.current} for t in entries] for name, entries in temperatures.items()
    }
    fans = getattr(psutil, "sensors_fans", lambda: {})() or {}
    reading["fans"] = {name: [{"label": f.label, "rpm": f.current} for f in entries] for name, entries in fans.items()}
    battery = psutil.sensors_battery() if hasattr(psutil, "sensors_battery") else None
    if battery is not None:
        reading["battery"] = {"percent": battery.percent, "plugged": battery.power_plugged}
    return reading


def main() -> int:
    sensors_dir = Path(os.environ.get("TASK_SCHEDULER_DATA_DIR", "data")) / "sensors"
    sensors_dir.mkdir(parents=True, exist_ok=True)
    reading = sample()
    target = sensors_dir / f"sensors-{datetime.now(UTC):%Y%m%d%H}.jsonl"
    with target.open("a", encoding="utf-8") as stream:
        stream.write(json.dumps(reading) + "\n")
    found = [k for k in ("temperatures", "fans", "battery") if reading.get(k)]
    print(
        f"sample written to {target.name}: cpu {reading['cpu_percent']}%, extra sensors: {', '.join(found) or 'none'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
