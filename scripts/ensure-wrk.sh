#!/usr/bin/env bash
# Make sure Debian's `wrk` package (an HTTP load generator) is installed, then run the command
# given, if any.
#
# tests/benchmarks/test_drift_deployed.py drives enrolled `modelfleet agent run` processes
# with wrk (issue 9). When wrk is missing this installs the package (needs root and apt-get).
# Where it cannot be had the command still runs: locally that test skips; in CI (CI=true) it
# fails, so a missing install step cannot hide behind a skip.
set -uo pipefail

if ! command -v wrk >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "== installing wrk from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends wrk >/dev/null 2>&1 || {
    apt-get update -qq >/dev/null 2>&1 || true
    apt-get install -y -qq --no-install-recommends wrk >/dev/null 2>&1 \
      || echo "!! apt-get install wrk failed"
  }
fi

if command -v wrk >/dev/null 2>&1; then
  echo "== $(wrk --version 2>&1 | head -1)"
else
  echo "!! no wrk available; the deployed drift benchmark test will skip (fail under CI)"
fi

if [ "$#" -gt 0 ]; then
  "$@"
fi
