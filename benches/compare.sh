#!/usr/bin/env bash
# Runs the end-to-end benchmark with the Python reference in the same run:
# ours/ours, ours -> reference server, reference client -> ours, and
# reference/reference, with our ratios. It reuses the interop tests' virtual
# environment (zeroeventhub==0.2.4, FastAPI, uvicorn, httpx), building it
# first through those tests when it does not exist yet.
#
#   bash benches/compare.sh [--runs 5] [--no-scaling] [--events N]
set -euo pipefail
cd "$(dirname "$0")/.."

find_venv_python() {
    local ready
    for ready in target/tmp/interop-venv/*/ready; do
        [ -f "$ready" ] && { echo "$(dirname "$ready")/bin/python"; return 0; }
    done
    return 1
}

if ! python=$(find_venv_python); then
    echo "building the reference's virtual environment (through the golden tests)..." >&2
    cargo test --quiet --test golden >/dev/null
    python=$(find_venv_python) || { echo "the interop venv was not created under target/tmp/interop-venv" >&2; exit 1; }
fi

exec cargo run --quiet --release --example bench -- --compare --python "$python" "$@"
