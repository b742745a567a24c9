#!/usr/bin/env bash
# One entry point for a fresh machine. Sets up .venv (pinned by constraints.txt), fetches
# Kafka from Maven Central on first use, and then:
#   demo        start local Kafka + S3 + a log receiver, run the worker, stream the samples
#   test        run the test suite (starts and stops its own Kafka and S3)
#   test-long   the long failure tests (more kills, longer outages)
#   bench       the benchmark against a raw aiokafka passthrough
#   up|down|status  manage the local Kafka + S3 only
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3

setup() {
  local stamp=.venv/.installed
  local want
  want=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
  if [[ ! -x .venv/bin/python ]]; then
    "$PY" -m venv .venv
  fi
  if [[ ! -f $stamp || $(cat $stamp) != "$want" ]]; then
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -c constraints.txt -e '.[dev]'
    echo "$want" > $stamp
  fi
}

cmd=${1:-help}
shift || true
case "$cmd" in
  setup) setup ;;
  test)
    setup
    set +e
    .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
    rc=$?
    set -e
    # pytest exits 5 when nothing was collected; that is a failure here, not a pass.
    exit $rc ;;
  test-long) setup; exec .venv/bin/python -m pytest -q -p no:cacheprovider -m slow "$@" ;;
  demo) setup; exec .venv/bin/streamer demo "$@" ;;
  bench) setup; exec .venv/bin/python -m streamer.benchmark "$@" ;;
  up|down|status) setup; exec .venv/bin/streamer dev "$cmd" "$@" ;;
  *) sed -n '2,9p' "$0"; exit 2 ;;
esac
