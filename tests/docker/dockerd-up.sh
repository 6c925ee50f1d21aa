#!/bin/sh
# Start a private dockerd for the docker tests (tests/docker/), as docs/docker.md describes
# for a machine without a Docker service: Debian's docker.io, its own containerd, data
# and exec roots and socket under DIR, no bridge and no iptables rules (containers use
# the host's network, on loopback ports).
#
#   tests/docker/dockerd-up.sh DIR     -> DOCKER_HOST=unix://DIR/docker.sock
#   tests/docker/dockerd-down.sh DIR   stops it, whatever state it is in, and removes DIR
#
# Runs as root. Installs docker.io, docker-compose and debootstrap when missing (unless
# TROUPE_DOCKER_NO_INSTALL=1).
set -eu
dir=${1:?usage: dockerd-up.sh DIR}
[ "$(id -u)" = 0 ] || { echo "dockerd-up: must run as root" >&2; exit 1; }

missing=""
for pkg in docker.io docker-compose debootstrap; do
    dpkg-query -W -f '${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' \
        || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    [ "${TROUPE_DOCKER_NO_INSTALL:-0}" = 1 ] && { echo "dockerd-up: missing:$missing" >&2; exit 1; }
    echo "dockerd-up: installing$missing"
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086  # a list of package names
    apt-get install -y -qq --no-install-recommends $missing >"${TMPDIR:-/tmp}/dockerd-up.apt.log" 2>&1 || {
        apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing; }
fi

mkdir -p "$dir"
# Its own session, so that a Ctrl-C in the terminal does not reach it; dockerd-down.sh
# stops it. dockerd starts and supervises its own containerd (state in DIR/exec).
setsid /usr/sbin/dockerd --data-root="$dir/data" --exec-root="$dir/exec" \
    --pidfile="$dir/dockerd.pid" -H "unix://$dir/docker.sock" \
    --bridge=none --iptables=false --ip6tables=false \
    >"$dir/dockerd.log" 2>&1 </dev/null &
export DOCKER_HOST="unix://$dir/docker.sock"
i=0
until docker info >/dev/null 2>&1; do
    i=$((i + 1))
    if [ "$i" -gt 300 ] || ! kill -0 $! 2>/dev/null; then
        echo "dockerd-up: dockerd did not answer within 30 s; its log:" >&2
        tail -20 "$dir/dockerd.log" >&2
        exit 1
    fi
    sleep 0.1
done
echo "DOCKER_HOST=$DOCKER_HOST"
