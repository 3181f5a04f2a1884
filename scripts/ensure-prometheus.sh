#!/usr/bin/env bash
# Make sure Debian's `prometheus` package (the prometheus server and promtool) is installed,
# then run the command given, if any.
#
# The observability tests run `promtool check rules|metrics|test rules` and a real Prometheus
# scraping a real hub and agent. When the binaries are missing this installs the package
# (needs root and apt-get). Where they cannot be had the command still runs: locally those
# tests skip; in CI (CI=true) they fail, so a missing install step cannot hide behind a skip.
set -uo pipefail

have_prometheus() {
  command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1
}

if ! have_prometheus && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "== installing Prometheus from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null 2>&1 || true
  # --no-install-recommends: the server and promtool, not the node exporter and friends;
  # policy-rc.d keeps the package from starting a system-wide prometheus service.
  ours=""
  if [ -d /usr/sbin ] && [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    ours=1
  fi
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 \
    || echo "!! apt-get install prometheus failed"
  [ -n "$ours" ] && rm -f /usr/sbin/policy-rc.d
fi

if have_prometheus; then
  echo "== $(promtool --version 2>&1 | head -1)"
else
  echo "!! no prometheus/promtool available; the observability tests will skip (fail under CI)"
fi

if [ "$#" -gt 0 ]; then
  "$@"
fi
