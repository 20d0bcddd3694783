#!/usr/bin/env bash
# Sets up and starts the demo: the scheduler plus the admin on SQLite, with a demo login.
#
# It only ever uses its own SQLite file, whatever DATABASE_URL the shell holds: it migrates
# it, creates the superuser demo/demo in it and starts a scheduler on it.
#   DEMO_DB=path   the demo's SQLite file (default db.sqlite3 beside manage.py)
#   PORT=8000      the admin's port on 127.0.0.1
#   VENV=.venv     the virtualenv (created with $PYTHON, default python3; reused as it is
#                  when already installed from requirements-dev.txt, e.g. VENV=.venv-django6)
#
#   bash scripts/demo.sh --fleet
# Fleet mode: also starts a private Redis (the Celery broker, on a free port of 127.0.0.1,
# nothing saved to disk) and one Celery worker, and declares the example jobs that run on
# it (jobs.py). It needs redis-server on PATH, and installs the celery[redis] pin of
# requirements-dev.txt into the virtualenv when Celery is not there. Like DATABASE_URL, a
# CELERY_BROKER_URL in the shell is ignored: the demo only uses its own Redis.
# Ctrl+C stops everything the demo started.
set -euo pipefail

FLEET=""
for arg in "$@"; do
  case "$arg" in
    --fleet) FLEET=1 ;;
    *) echo "demo.sh: unknown argument '$arg' (the only one is --fleet)" >&2; exit 2 ;;
  esac
done
if [ -n "$FLEET" ] && ! command -v redis-server >/dev/null 2>&1; then
  echo "demo.sh: fleet mode needs Redis: apt-get install redis-server" >&2
  echo "  (redis-server is not on PATH; on macOS: brew install redis)" >&2
  exit 2
fi

cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
. scripts/venv.sh "${PYTHON:-python3}" "$VENV" requirements.txt
PY="$VENV/bin/python"

if [ -n "$FLEET" ] && ! "$PY" -c "import celery" 2>/dev/null; then
  # Celery is an optional extra: install the version the test suite runs.
  celery_pin=$(grep -E '^celery\[redis\]==' requirements-dev.txt || true)
  celery_pin="${celery_pin:-celery[redis]>=5.5,<6}"
  echo "==> fleet mode: installing $celery_pin into $VENV"
  if ! "$VENV/bin/python" -m pip install --quiet "$celery_pin"; then
    echo "demo.sh: fleet mode needs Celery: installing $celery_pin into $VENV failed" \
      "(see above); install it there by hand: $VENV/bin/pip install '$celery_pin'" >&2
    exit 2
  fi
fi

DEMO_DB="${DEMO_DB:-db.sqlite3}"
case "$DEMO_DB" in
  *://*) echo "DEMO_DB must be the path of a SQLite file, not a URL: $DEMO_DB" >&2; exit 2 ;;
  /*) ;;
  *) DEMO_DB="$PWD/$DEMO_DB" ;;
esac
if [ -n "${DATABASE_URL:-}" ]; then
  # Never print it: it may hold a password.
  echo "==> ignoring DATABASE_URL from your shell: the demo only uses its own SQLite file"
fi
if [ -n "${CELERY_BROKER_URL:-}" ]; then
  # Nor this one. The demo's jobs must never reach a real fleet.
  echo "==> ignoring CELERY_BROKER_URL from your shell: the demo only uses its own Redis (--fleet)"
fi
unset CELERY_BROKER_URL
echo "==> database: SQLite file $DEMO_DB"
export DATABASE_URL="sqlite:///$DEMO_DB"
export DJANGO_SETTINGS_MODULE=settings DEBUG="${DEBUG:-1}"
# runserver answers plain HTTP on 127.0.0.1 only, even with DEBUG=0 in the shell.
export ALLOWED_HOSTS=127.0.0.1,localhost SECURE_SSL_REDIRECT=0 SECURE_HSTS_SECONDS=0 \
  SESSION_COOKIE_SECURE=0 CSRF_COOKIE_SECURE=0
PORT="${PORT:-8000}"

$PY manage.py migrate --verbosity 0
$PY manage.py shell --verbosity 0 -c "
from django.contrib.auth import get_user_model
User = get_user_model()
user, _ = User.objects.get_or_create(username='demo', defaults={'is_staff': True, 'is_superuser': True})
user.is_staff = user.is_superuser = True
user.set_password('demo')
user.save()
"

scheduler="" worker="" redis="" fleet_dir=""

stop_group() {  # PGID SECONDS: SIGTERM to a process group; SIGKILL to what is left after SECONDS
  kill -TERM -- "-$1" 2>/dev/null || return 0
  local tenths=$(($2 * 10))
  while [ "$tenths" -gt 0 ] && kill -0 -- "-$1" 2>/dev/null; do
    sleep 0.1
    tenths=$((tenths - 1))
  done
  kill -KILL -- "-$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

stop_all() {  # the EXIT trap: the scheduler first (it sends the runs), then the worker, Redis
  trap '' INT TERM
  if [ -n "$scheduler" ]; then
    kill -TERM "$scheduler" 2>/dev/null || true
    wait "$scheduler" 2>/dev/null || true
  fi
  if [ -n "$worker" ]; then
    if kill -0 "$worker" 2>/dev/null; then
      echo "==> stopping the Celery worker (it finishes the runs it has started)"
    fi
    stop_group "$worker" 30
  fi
  if [ -n "$redis" ]; then
    stop_group "$redis" 10
  fi
  if [ -n "$fleet_dir" ]; then
    rm -rf "$fleet_dir"
  fi
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# "${in_own_group[@]}" COMMAND... &: runs it in a process group of its own, whose id is $!
# (stop_group stops it with its children); Ctrl+C in the terminal reaches it only through
# stop_all, in order. (An array, not a function: a function run with & is a subshell.)
in_own_group=("$PY" -c 'import os, sys; os.setpgid(0, 0); os.execvp(sys.argv[1], sys.argv[1:])')

fail_with_log() {  # WHAT LOG: a process of the fleet did not start (its log goes with it)
  echo "demo.sh: $1 did not start; its log ends with:" >&2
  tail -n 30 "$2" >&2 || true
  exit 1
}

if [ -n "$FLEET" ]; then
  fleet_dir=$(mktemp -d "${TMPDIR:-/tmp}/scheduler-demo-fleet.XXXXXX")
  redis_port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  "${in_own_group[@]}" redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$fleet_dir" </dev/null >"$fleet_dir/redis.log" 2>&1 &
  redis=$!
  if ! "$PY" - "$redis_port" <<'PY'; then
import socket, sys, time

deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    try:
        with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            if sock.recv(16).startswith(b"+PONG"):
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.1)
sys.exit(1)
PY
    fail_with_log "redis-server on 127.0.0.1:$redis_port" "$fleet_dir/redis.log"
  fi
  echo "==> Redis (the Celery broker): 127.0.0.1:$redis_port"
  export CELERY_BROKER_URL="redis://127.0.0.1:$redis_port/0"

  worker_host=$("$PY" -c 'import socket; print(socket.gethostname())')
  "${in_own_group[@]}" "$VENV/bin/celery" -A settings.celery worker -n "demo-worker@%h" \
    --pool prefork --concurrency 2 --loglevel INFO \
    --without-gossip --without-mingle --without-heartbeat \
    </dev/null >"$fleet_dir/worker.log" 2>&1 &
  worker=$!
  echo "==> starting the Celery worker demo-worker@$worker_host"
  waited=0
  until grep -q " ready\.$" "$fleet_dir/worker.log"; do
    if ! kill -0 "$worker" 2>/dev/null || [ "$waited" -ge 600 ]; then
      fail_with_log "the Celery worker" "$fleet_dir/worker.log"
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
fi

$PY manage.py runapscheduler &
scheduler=$!

if [ -n "$FLEET" ]; then
  stops="Ctrl+C stops them all"
else
  stops="Ctrl+C stops both"
fi
cat <<MSG

  Demo running on the SQLite file $DEMO_DB
  Open http://127.0.0.1:$PORT/admin/  and log in as  demo / demo
  The example jobs in jobs.py fill Scheduler > Runs within seconds. $stops.
MSG
if [ -n "$FLEET" ]; then
  cat <<MSG

  Fleet mode: Redis, the Celery broker, listens on 127.0.0.1:$redis_port (nothing saved).
  One Celery worker, demo-worker@$worker_host (2 processes), runs the jobs declared with
  executor="celery": jobs.fleet_report and jobs.fleet_thumbnails. Their runs say
  "ran on demo-worker@$worker_host" in the admin.
  The worker's log: tail -f $fleet_dir/worker.log
MSG
fi
echo
$PY manage.py runserver --noreload "127.0.0.1:$PORT"
