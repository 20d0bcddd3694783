# Sourced by the other scripts: makes (or reuses) a virtualenv and installs a requirements file.
# Usage: . scripts/venv.sh PYTHON VENV_DIR REQUIREMENTS_FILE
# DJANGO_VERSION=6.1.3 swaps the pinned Django for that release (the Django 6 CI leg).
set -euo pipefail
_python=$1 _venv=$2 _reqs=$3
if [ ! -x "$_venv/bin/python" ]; then
  echo "==> creating $_venv with $_python"
  "$_python" -m venv "$_venv"
fi
_stamp="$_venv/.installed-$( (cat "$_reqs" requirements.txt; echo "${DJANGO_VERSION:-}") | sha256sum | cut -c1-16)"
if [ ! -f "$_stamp" ]; then
  echo "==> installing $_reqs into $_venv"
  "$_venv/bin/python" -m pip install --quiet --upgrade pip
  "$_venv/bin/python" -m pip install --quiet -r "$_reqs"
  if [ -n "${DJANGO_VERSION:-}" ]; then
    "$_venv/bin/python" -m pip install --quiet "Django==$DJANGO_VERSION"
  fi
  rm -f "$_venv"/.installed-*
  touch "$_stamp"
fi
