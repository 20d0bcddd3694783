#!/usr/bin/env bash
# Sets up and starts the demo: the scheduler plus the admin on SQLite, with a demo login.
#
# It only ever uses its own SQLite file, whatever DATABASE_URL the shell holds: it migrates
# it, creates the superuser demo/demo in it and starts a scheduler on it.
#   DEMO_DB=path   the demo's SQLite file (default db.sqlite3 beside manage.py)
#   PORT=8000      the admin's port on 127.0.0.1
#   VENV=.venv     the virtualenv (created with $PYTHON, default python3; reused as it is
#                  when already installed from requirements-dev.txt, e.g. VENV=.venv-django6)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
. scripts/venv.sh "${PYTHON:-python3}" "$VENV" requirements.txt
PY="$VENV/bin/python"

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

$PY manage.py runapscheduler &
scheduler=$!
trap 'kill -TERM $scheduler 2>/dev/null; wait $scheduler 2>/dev/null' EXIT INT TERM

cat <<MSG

  Demo running on the SQLite file $DEMO_DB
  Open http://127.0.0.1:$PORT/admin/  and log in as  demo / demo
  The example jobs in jobs.py fill Scheduler > Runs within seconds. Ctrl+C stops both.

MSG
$PY manage.py runserver --noreload "127.0.0.1:$PORT"
