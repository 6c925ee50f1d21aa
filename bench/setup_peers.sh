#!/usr/bin/env bash
# Install each benchmark peer from PyPI into its own virtualenv under bench/.venvs/.
# A peer that fails to install is reported and skipped (bench/run.py then records it as
# "not installed" in the table); the other peers are still installed.
#
#   bash bench/setup_peers.sh            # all peers
#   bash bench/setup_peers.sh parsl dask # some
#   bash bench/setup_peers.sh merlin     # Merlin 1.13.0 for bench/merlin_peer.py (not in "all")
#
# Merlin pins celery<5.7: with the celery 5.7.0 that `pip install merlin==1.13.0` pulls in,
# a chain never gets past its first step (issue 18). The test oracle's .venv-merlin is left
# as it is; this venv is the benchmark's own.
set -u
here="$(cd "$(dirname "$0")" && pwd)"
py="${PYTHON:-python3}"
venvs="$here/.venvs"
mkdir -p "$venvs"
declare -A pkgs=(
  [parsl]="parsl"
  [snakemake]="snakemake"
  [dask]="dask distributed"
  [merlin]="merlin==1.13.0 celery<5.7"
)
peers=("$@")
[ ${#peers[@]} -eq 0 ] && peers=(parsl snakemake dask)
status=0
for p in "${peers[@]}"; do
  v="$venvs/$p"
  if [ -x "$v/bin/python" ] && [ -f "$v/.ok" ]; then echo "$p: already installed"; continue; fi
  rm -rf "$v"
  echo "$p: installing ${pkgs[$p]} into $v"
  if "$py" -m venv "$v" && "$v/bin/pip" install -q ${pkgs[$p]} psutil >"$v.log" 2>&1; then
    touch "$v/.ok"
    echo "$p: ok"
  else
    echo "$p: FAILED (see $v.log)"
    status=1
  fi
done
exit $status
