#!/usr/bin/env bash
# Install task_scheduler as a systemd service: the service user, its directories, a
# config, a generated API token and the unit. Safe to run again: existing config and
# token are kept. Run from a checkout after installing the package, as root:
#
#   sudo python3 -m venv /opt/task-scheduler/venv
#   sudo /opt/task-scheduler/venv/bin/pip install '/path/to/checkout[metrics]'
#   sudo scripts/install-service.sh --exec /opt/task-scheduler/venv/bin/task-scheduler
#   sudo systemctl enable --now task-scheduler
#
# Layout (under --root, default /):
#   /etc/task-scheduler/scheduler_config.json  0640 root:task-scheduler (the CLI finds it without --config)
#   /etc/task-scheduler/environment            0600 root:root, TASK_SCHEDULER__HTTP__TOKEN=... (read by systemd)
#   /var/lib/task-scheduler/                   0750 task-scheduler: state.db (0600), data/
#   /var/log/task-scheduler/                   0750 task-scheduler: scheduler.log
#   /opt/task-scheduler/scripts/               job scripts (allowed_script_dirs)
#   /etc/systemd/system/task-scheduler.service
#
# Operators use the CLI as the service user (the state is its own, mode 0600):
#   sudo -u task-scheduler task-scheduler list
# A different --root lays the same tree out under a directory (packaging, tests); the
# CLI finds it there with TASK_SCHEDULER_ROOT=DIR.
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
  cat <<'TEXT'
Options:
  --root DIR         install under DIR instead of / (no user is created, systemctl is not run)
  --user NAME        the service user and group (default task-scheduler)
  --exec COMMAND     how to start task-scheduler (default: the task-scheduler found on PATH)
  --base-dir DIR     where job scripts live (default /opt/task-scheduler)
  --http-port PORT   the API/dashboard port on 127.0.0.1 (default 8080; 0: any free port)
  --no-user          do not create the user
  --no-systemctl     do not run systemctl daemon-reload
TEXT
}

ROOT=/
SERVICE_USER=task-scheduler
EXEC=""
BASE_DIR=/opt/task-scheduler
HTTP_PORT=8080
CREATE_USER=1
RUN_SYSTEMCTL=1
while [ $# -gt 0 ]; do
  case "$1" in
    --root) ROOT=$2; shift 2 ;;
    --user) SERVICE_USER=$2; shift 2 ;;
    --exec) EXEC=$2; shift 2 ;;
    --base-dir) BASE_DIR=$2; shift 2 ;;
    --http-port) HTTP_PORT=$2; shift 2 ;;
    --no-user) CREATE_USER=0; shift ;;
    --no-systemctl) RUN_SYSTEMCTL=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install-service.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

HERE=$(cd "$(dirname "$0")/.." && pwd)
ROOT=$(cd "$ROOT" && pwd)
at() { # a path under the root, without a doubled slash
  if [ "$ROOT" = / ]; then printf '%s' "$1"; else printf '%s%s' "$ROOT" "$1"; fi
}
ETC=$(at /etc/task-scheduler)
STATE=$(at /var/lib/task-scheduler)
LOGS=$(at /var/log/task-scheduler)
BASE=$(at "$BASE_DIR")
UNIT_DIR=$(at /etc/systemd/system)
if [ -z "$EXEC" ]; then
  EXEC=$(command -v task-scheduler || true)
  [ -n "$EXEC" ] || { echo "install-service.sh: task-scheduler is not on PATH; pass --exec" >&2; exit 2; }
fi
PYTHON=$(command -v python3)

if [ "$ROOT" != / ]; then CREATE_USER=0; RUN_SYSTEMCTL=0; fi
if [ "$CREATE_USER" = 1 ] && ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
  useradd --system --user-group --home-dir /var/lib/task-scheduler --no-create-home \
    --shell /usr/sbin/nologin --comment "task_scheduler service" "$SERVICE_USER"
  echo "created user $SERVICE_USER"
fi
# Ownership needs root and an existing user; otherwise files stay the installer's.
OWNER=()
GROUP_OWNER=()
if [ "$(id -u)" = 0 ] && id -u "$SERVICE_USER" >/dev/null 2>&1; then
  OWNER=(-o "$SERVICE_USER" -g "$SERVICE_USER")
  GROUP_OWNER=(-o root -g "$SERVICE_USER")
fi

install -d -m 0750 "${OWNER[@]}" "$STATE" "$STATE/data" "$LOGS"
install -d -m 0750 "${GROUP_OWNER[@]}" "$ETC"
install -d -m 0755 "$BASE" "$BASE/scripts" "$UNIT_DIR"

if [ ! -e "$ETC/environment" ]; then
  TOKEN=$("$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(32))')
  umask 077
  printf '# Read by systemd (EnvironmentFile=): secrets stay out of the config file.\nTASK_SCHEDULER__HTTP__TOKEN=%s\n' \
    "$TOKEN" > "$ETC/environment"
  umask 022
  chmod 0600 "$ETC/environment"
  echo "generated the API token in $ETC/environment"
fi

CONFIG="$ETC/scheduler_config.json"
if [ ! -e "$CONFIG" ]; then
  STATE="$STATE" LOGS="$LOGS" BASE="$BASE" PORT="$HTTP_PORT" "$PYTHON" - > "$CONFIG.new" <<'PY'
import json, os
config = {
    "scheduler": {"timezone": "UTC", "base_dir": os.environ["BASE"], "data_dir": os.environ["STATE"] + "/data",
                  "catch_up": True},
    "store": {"url": "sqlite://" + os.environ["STATE"] + "/state.db"},
    "tasks": {"allowed_script_dirs": [os.environ["BASE"] + "/scripts"], "max_retries": 2,
              "retry_backoff": "exponential"},
    "logging": {"log_dir": os.environ["LOGS"], "log_file": "scheduler.log", "console": True},
    "http": {"enabled": True, "host": "127.0.0.1", "port": int(os.environ["PORT"])},
    "jobs": [{"id": "log_cleanup", "name": "Log cleanup", "builtin": "log_cleanup",
              "params": {"max_age_days": 14}, "schedule": {"cron": "30 3 * * *"}}],
}
print(json.dumps(config, indent=2))
PY
  install -m 0640 "${GROUP_OWNER[@]}" "$CONFIG.new" "$CONFIG"
  rm -f "$CONFIG.new"
  echo "wrote $CONFIG"
else
  echo "kept the existing $CONFIG"
fi

sed -e "s|^ExecStart=.*|ExecStart=$EXEC run|" -e "s|^User=.*|User=$SERVICE_USER|" -e "s|^Group=.*|Group=$SERVICE_USER|" \
  -e "s|^WorkingDirectory=.*|WorkingDirectory=$BASE_DIR|" \
  "$HERE/systemd/task-scheduler.service" > "$UNIT_DIR/task-scheduler.service"
chmod 0644 "$UNIT_DIR/task-scheduler.service"
echo "installed $UNIT_DIR/task-scheduler.service"

if [ "$RUN_SYSTEMCTL" = 1 ] && command -v systemctl >/dev/null 2>&1; then
  systemctl daemon-reload
  echo "next: systemctl enable --now task-scheduler; then: sudo -u $SERVICE_USER task-scheduler status"
fi
