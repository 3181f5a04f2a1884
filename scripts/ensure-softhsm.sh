#!/usr/bin/env bash
# Make sure Debian's `softhsm2` package (a software PKCS#11 token) is installed, then run the
# command given, if any.
#
# tests/trust/test_hsm_signing.py signs TUF metadata through SoftHSM with securesystemslib's
# HSMSigner (issue 10). When softhsm2-util is missing this installs the package (needs root
# and apt-get). Where it cannot be had the command still runs: locally that test skips; in
# CI (CI=true) it fails, so a missing install step cannot hide behind a skip.
set -uo pipefail

if ! command -v softhsm2-util >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "== installing SoftHSM from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends softhsm2 >/dev/null 2>&1 || {
    apt-get update -qq >/dev/null 2>&1 || true
    apt-get install -y -qq --no-install-recommends softhsm2 >/dev/null 2>&1 \
      || echo "!! apt-get install softhsm2 failed"
  }
fi

if command -v softhsm2-util >/dev/null 2>&1; then
  echo "== $(softhsm2-util --version 2>&1 | head -1 | sed 's/^/SoftHSM /')"
else
  echo "!! no softhsm2-util available; the SoftHSM signing test will skip (fail under CI)"
fi

if [ "$#" -gt 0 ]; then
  "$@"
fi
