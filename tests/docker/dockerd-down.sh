#!/bin/sh
# Stop the private dockerd of tests/docker/dockerd-up.sh DIR and remove DIR: its
# containers, dockerd, its containerd and their shims, and the mounts they left.
# Safe to run on a half-started or already stopped one.
set -u
dir=${1:?usage: dockerd-down.sh DIR}
[ -d "$dir" ] || exit 0
export DOCKER_HOST="unix://$dir/docker.sock"

if [ -S "$dir/docker.sock" ]; then
    ids=$(timeout 20 docker ps -aq 2>/dev/null || true)
    # shellcheck disable=SC2086  # a list of ids
    [ -n "$ids" ] && timeout 60 docker rm -f $ids >/dev/null 2>&1
fi

stop() {  # $1: a pid file; SIGTERM, then SIGKILL after 15 s
    [ -s "$1" ] || return 0
    pid=$(cat "$1")
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null
    i=0
    while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 150 ]; do sleep 0.1; i=$((i + 1)); done
    kill -KILL "$pid" 2>/dev/null || true
}
stop "$dir/dockerd.pid"
stop "$dir/exec/containerd/containerd.pid"
# Shims of containers that outlived their daemon name its socket in their arguments.
for proc in /proc/[0-9]*; do
    if { tr '\0' ' ' <"$proc/cmdline"; } 2>/dev/null | grep -q -- "-address $dir/exec/"; then
        kill -KILL "${proc#/proc/}" 2>/dev/null || true
    fi
done

# What is still mounted under DIR (overlays, the network namespace's nsfs), deepest first.
awk -v d="$dir/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
    while read -r m; do umount -l "$m" 2>/dev/null || true; done
rm -rf "$dir"
