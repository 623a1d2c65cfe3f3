#!/usr/bin/env bash
# Set up and run the whole test suite: lint, type check, tests (arguments go to pytest).
source "$(dirname "$0")/env.sh"

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
# The end-to-end observability test runs real Prometheus and Alertmanager (promtool and
# amtool come with them). The tests start their own processes; none started by the
# packages is used.
command -v prometheus >/dev/null || missing+=(prometheus)
command -v prometheus-alertmanager >/dev/null || command -v alertmanager >/dev/null \
    || missing+=(prometheus-alertmanager)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing ${missing[*]}"
    apt_install "${missing[@]}"
fi

ensure_venv test
.venv/bin/ruff check .
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
