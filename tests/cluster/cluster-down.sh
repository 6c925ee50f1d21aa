#!/bin/sh
# Stop the cluster cluster-up.sh started in DIR.
set -u
dir=${1:?usage: cluster-down.sh DIR}
for pid in "$dir"/n*/pid; do
    [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null
done
exit 0
