#!/usr/bin/env bash
# `make conformance`: run theupdateframework/tuf-conformance against `modelfleet tuf-client`.
#
# The suite is public code, fetched, never vendored: TUF_CONFORMANCE_SRC names a checkout
# (default .bench/tuf-conformance, cloned at the pinned commit when missing). It is
# installed into its own venv, .bench/conformance-venv (it pins its own tuf and pytest),
# and run with scripts/tuf-conformance-client as the entrypoint; expected failures are
# listed, with their reasons, in scripts/tuf-conformance-client.xfails. Needs `faketime`
# (Debian's package; installed when missing and we are root). The JSON report goes to
# .bench/conformance-report.json; the summary line is printed last.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
SRC=${TUF_CONFORMANCE_SRC:-.bench/tuf-conformance}
REF=${TUF_CONFORMANCE_REF:-eec841c}
VENV=.bench/conformance-venv
REPO_URL=${TUF_CONFORMANCE_URL:-https://github.com/theupdateframework/tuf-conformance}

if ! command -v faketime >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get install -y -q faketime >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q faketime >/dev/null; }
    else
        echo "error: the suite needs 'faketime' (Debian: apt-get install faketime)" >&2
        exit 1
    fi
fi
if [ ! -d "$SRC/tuf_conformance" ]; then
    mkdir -p "$(dirname "$SRC")"
    git clone -q "$REPO_URL" "$SRC"
    git -C "$SRC" checkout -q "$REF"
fi
if [ ! -x "$VENV/bin/pytest" ] || [ "$SRC/pyproject.toml" -nt "$VENV/.installed" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q "$SRC"
    touch "$VENV/.installed"
fi
entry="$PWD/scripts/tuf-conformance-client"
report="$PWD/.bench/conformance-report.json"
MODELFLEET_PYTHON="$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")" \
    "$VENV/bin/pytest" -q -p no:cacheprovider -c "$SRC/pyproject.toml" --rootdir "$SRC" \
    "$SRC/tuf_conformance" --entrypoint "$entry" \
    --json-report --json-report-file="$report" "$@"
