#!/usr/bin/env bash
# The test command: sets up ./.venv if needed, then runs the whole suite on the CPU.
# The whole suite is what CI runs.  The fast lane, `bash run_tests.sh -m "not slow"`, leaves out the
# tests marked slow (training runs, subprocesses, full-size models, per-variant sweeps) and takes under
# a minute on 2 cores; it lists at its end any test over 2 s (tests/conftest.py), to mark or make cheaper.
set -euo pipefail
cd "$(dirname "$0")"
bash tools/setup_env.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider tests "$@"
