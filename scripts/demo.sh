#!/usr/bin/env bash
# Sets up and starts the demo: the scheduler plus the admin on SQLite, with a demo login.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh "${PYTHON:-python3}" .venv requirements.txt
PY=.venv/bin/python
export DJANGO_SETTINGS_MODULE=settings DEBUG="${DEBUG:-1}"
PORT="${PORT:-8000}"

$PY manage.py migrate --verbosity 0
$PY manage.py compilemessages --ignore '.venv*' --verbosity 0 2>/dev/null || true
$PY manage.py shell -c "
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

  Demo running. Open http://127.0.0.1:$PORT/admin/  and log in as  demo / demo
  The example jobs in jobs.py fill Scheduler > Runs within seconds. Ctrl+C stops both.

MSG
$PY manage.py runserver --noreload "127.0.0.1:$PORT"
