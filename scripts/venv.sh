# Sourced by the other scripts: makes (or reuses) a virtualenv and installs a requirements file.
# Usage: . scripts/venv.sh PYTHON VENV_DIR REQUIREMENTS_FILE
# DJANGO_VERSION=6.1.3 swaps the pinned Django for that release (the Django 6 CI leg).
#
# A stamp file, $VENV_DIR/.installed-<hash of the requirements and DJANGO_VERSION>, records
# the last install; it holds the requirements file's name and DJANGO_VERSION, one a line.
set -euo pipefail
_python=$1 _venv=$2 _reqs=$3
if [ ! -x "$_venv/bin/python" ]; then
  echo "==> creating $_venv with $_python"
  "$_python" -m venv "$_venv"
fi

_stamp_for() {  # REQUIREMENTS_FILE DJANGO_VERSION -> the stamp an install of them leaves
  echo "$_venv/.installed-$( (cat "$1" requirements.txt; echo "$2") | sha256sum | cut -c1-16)"
}

_stamp=$(_stamp_for "$_reqs" "${DJANGO_VERSION:-}")
_reuse=""
if [ ! -f "$_stamp" ] && [ "$_reqs" = requirements.txt ]; then
  # Every other requirements file includes requirements.txt (-r), so a venv installed from
  # one of them, and still current, already holds the runtime. Installing requirements.txt
  # over it would undo its DJANGO_VERSION and make test.sh reinstall its tools next time.
  # With DJANGO_VERSION set (the Django 6 leg runs the demo with it), only a venv installed
  # with that same Django will do.
  for _found in "$_venv"/.installed-*; do
    [ -f "$_found" ] || continue
    _found_reqs=$(sed -n 1p "$_found") _found_django=$(sed -n 2p "$_found")
    if [ -n "${DJANGO_VERSION:-}" ] && [ "$_found_django" != "$DJANGO_VERSION" ]; then
      continue
    fi
    if [ -n "$_found_reqs" ]; then
      _candidates=("$_found_reqs")
    else
      _candidates=(requirements*.txt)  # a stamp from before stamps said what they were for
    fi
    for _candidate in "${_candidates[@]}"; do
      if [ -f "$_candidate" ] && [ "$(_stamp_for "$_candidate" "$_found_django")" = "$_found" ]; then
        _reuse=$_candidate
      fi
    done
  done
fi

if [ -n "$_reuse" ]; then
  echo "==> reusing $_venv (installed from $_reuse)"
elif [ ! -f "$_stamp" ]; then
  echo "==> installing $_reqs into $_venv"
  "$_venv/bin/python" -m pip install --quiet --upgrade pip
  "$_venv/bin/python" -m pip install --quiet -r "$_reqs"
  if [ -n "${DJANGO_VERSION:-}" ]; then
    "$_venv/bin/python" -m pip install --quiet "Django==$DJANGO_VERSION"
  fi
  rm -f "$_venv"/.installed-*
  printf '%s\n%s\n' "$_reqs" "${DJANGO_VERSION:-}" >"$_stamp"
fi
