# Shared by scripts/demo.sh and scripts/test.sh: system packages and the virtualenv.
# Source it; it changes to the repository root.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

apt_install() {
    # apt_install PACKAGE... : install Debian packages (as root, or through sudo).
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if ! command -v sudo >/dev/null; then
            echo "need root (or sudo) to install the Debian packages: $*" >&2
            exit 1
        fi
        sudo="sudo"
    fi
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "$@" </dev/null
}

ensure_venv() {
    # ensure_venv EXTRAS : a .venv with the project installed (editable) with EXTRAS.
    local python="${PYTHON:-python3}"
    if [ -d .venv ] && ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
        rm -rf .venv  # left half-made by an interrupted run
    fi
    if [ ! -x .venv/bin/python ]; then
        if ! "$python" -m venv .venv; then
            rm -rf .venv
            apt_install python3-venv
            "$python" -m venv .venv
        fi
    fi
    .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
    .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$1]"
}
