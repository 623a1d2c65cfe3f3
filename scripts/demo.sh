#!/usr/bin/env bash
# Set up and run `stem-observe demo` on its embedded defaults (arguments are passed on).
source "$(dirname "$0")/env.sh"
ensure_venv otlp
exec .venv/bin/stem-observe demo "$@"
