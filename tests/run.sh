#!/usr/bin/env bash
# Install the test dependencies and run the whole test suite.
#
# As root (CI, a scratch machine) it also installs and starts a private single-node Slurm
# (tests/slurm/slurm-up.sh) so the Slurm tests run for real, and tears it down afterwards.
# Without root, or with TROUPE_NO_SLURM=1, the Slurm tests are skipped. Under CI=true a
# Slurm that fails to start fails the run. It also installs the real Merlin 1.13.0 into
# .venv-merlin (once) for the Merlin oracle tests ($TROUPE_MERLIN). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
.venv/bin/pip install -q -e '.[test]' 2>&1 | grep -v "is ignored" || true
.venv/bin/python -c "import engine, pytest, maestrowf" >/dev/null

# The real Merlin, the oracle of tests/merlin/, in a venv of its own: it brings Celery, Redis
# clients and numpy, none of which Troupe needs.
if [ ! -x .venv-merlin/bin/merlin ]; then
    python3 -m venv .venv-merlin
    .venv-merlin/bin/pip install -q merlin==1.13.0 2>&1 | grep -v "is ignored" || true
fi
export TROUPE_MERLIN="$PWD/.venv-merlin/bin/merlin"

slurm=0
if [ "$(id -u)" = 0 ] && [ "${TROUPE_NO_SLURM:-0}" != 1 ]; then
    if bash tests/slurm/slurm-up.sh > .slurm-up.log 2>&1; then
        slurm=1
        trap 'bash tests/slurm/slurm-down.sh > .slurm-down.log 2>&1 || true' EXIT
    elif [ "${CI:-}" = true ]; then
        echo "error: Slurm did not start (see .slurm-up.log):" >&2
        tail -20 .slurm-up.log >&2
        exit 1
    else
        echo "warning: Slurm did not start (see .slurm-up.log); its tests will be skipped" >&2
    fi
fi
echo "running the test suite (real Slurm: $([ "$slurm" = 1 ] && echo yes || echo no))"
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
