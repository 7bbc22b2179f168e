#!/bin/bash
# netns_hosts.sh: two "hosts" on this machine for Open MPI, as two network
# namespaces joined by a veth pair, for the two-host test
# (tests/e2e/dist/test_hosts.py) and the distributed benchmark
# (bench/dist_bench.sh). Needs root and iproute2; one shell, no threads.
#
#   netns_hosts.sh up NAME DIR [NET]   make hosts NAMEh0 and NAMEh1 (NET.1 and NET.2 on NET.0/24,
#                                      default NET 10.77.0) and write in DIR:
#                                        DIR/agent     the rsh agent mpirun calls (`agent HOST cmd...`):
#                                                      runs cmd in HOST's namespace, under its own
#                                                      host name (UTS namespace: NAME-host0, NAME-host1)
#                                        DIR/hostfile  the two addresses, one slot each
#                                        DIR/mpirun    `DIR/mpirun ARGS...`: mpirun started in host 0
#                                                      (its namespace and host name) over the two hosts
#                                                      (TCP on the veth only; ARGS as for mpirun)
#                                        DIR/on0       `DIR/on0 CMD...`: CMD in host 0, its host name set
#                                      Exit status 4 when the namespaces cannot be made (not root, no
#                                      `ip netns`): callers skip on that; 1 on any other failure.
#   netns_hosts.sh down NAME           kill what still runs in the two namespaces (processes the
#                                      caller started there), delete the veth pair and the namespaces.
#                                      Safe to call twice or after a failed `up`.
#   netns_hosts.sh pids NAME I         the process ids running in host I's namespace, one a line.
#
# NAME: up to 11 characters (interface names are NAMEv0/NAMEv1, at most 15).
# The subnet lives only inside the two namespaces, so runs with different
# NAMEs can use the same NET at once.
set -u

usage() {
    sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

ns() { echo "${1}h${2}"; }

down() {
    local name=$1 i pid
    for i in 0 1; do
        if ip netns list 2>/dev/null | grep -qw "^$(ns "$name" "$i")"; then
            for pid in $(ip netns pids "$(ns "$name" "$i")" 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done
        fi
    done
    ip link del "${name}v0" 2>/dev/null
    ip -n "$(ns "$name" 0)" link del "${name}v0" 2>/dev/null
    for i in 0 1; do ip netns del "$(ns "$name" "$i")" 2>/dev/null; done
    return 0
}

up() {
    local name=$1 dir=$2 net=${3:-10.77.0}
    if [ ${#name} -gt 11 ] || [ -z "$name" ]; then
        echo "netns_hosts: NAME must be 1 to 11 characters: $name" >&2
        exit 2
    fi
    if [ "$(id -u)" != 0 ] || ! command -v ip >/dev/null; then
        echo "netns_hosts: network namespaces need root and iproute2 (uid $(id -u))" >&2
        exit 4
    fi
    if ! ip netns add "$(ns "$name" 0)"; then
        echo "netns_hosts: cannot make a network namespace (ip netns add)" >&2
        exit 4
    fi
    local a=$(ns "$name" 0) b=$(ns "$name" 1)
    ip netns add "$b" &&
        ip link add "${name}v0" type veth peer name "${name}v1" &&
        ip link set "${name}v0" netns "$a" &&
        ip link set "${name}v1" netns "$b" &&
        ip -n "$a" addr add "$net.1/24" dev "${name}v0" &&
        ip -n "$b" addr add "$net.2/24" dev "${name}v1" &&
        ip -n "$a" link set lo up && ip -n "$b" link set lo up &&
        ip -n "$a" link set "${name}v0" up && ip -n "$b" link set "${name}v1" up ||
        { echo "netns_hosts: setting up the veth pair failed" >&2; down "$name"; exit 1; }
    mkdir -p "$dir" || { down "$name"; exit 1; }
    dir=$(cd "$dir" && pwd)
    # The agent is called as `agent [options] HOST word...`; the words are one shell command line quoted
    # for a remote shell (Open MPI passes e.g. `orted -mca ess "env" ...`), hence sh -c "$*".
    cat >"$dir/agent" <<EOF
#!/bin/sh
# rsh agent for mpirun (written by scripts/netns_hosts.sh up $name): HOST's namespace and host name.
while [ \$# -gt 0 ] && [ "\${1#-}" != "\$1" ]; do shift; done
host=\$1
shift
case "\$host" in
$net.1) ns=$a; hn=$name-host0 ;;
$net.2) ns=$b; hn=$name-host1 ;;
*) echo "netns_hosts agent: unknown host \$host" >&2; exit 1 ;;
esac
exec ip netns exec "\$ns" unshare --uts sh -c "hostname \$hn && \$*"
EOF
    printf '%s slots=1\n%s slots=1\n' "$net.1" "$net.2" >"$dir/hostfile"
    cat >"$dir/on0" <<EOF
#!/bin/sh
# CMD in host 0 of $name (written by scripts/netns_hosts.sh up): its namespace and host name.
exec ip netns exec $a unshare --uts sh -c 'hostname $name-host0 && exec "\$@"' sh "\$@"
EOF
    cat >"$dir/mpirun" <<EOF
#!/bin/sh
# mpirun over the two hosts of $name (written by scripts/netns_hosts.sh up), started in host 0.
# TCP on the veth subnet only: the ranks are on different hosts, so shared memory is not used between them.
exec "$dir/on0" mpirun --allow-run-as-root --hostfile "$dir/hostfile" --mca plm_rsh_agent "$dir/agent" \\
    --mca btl tcp,self --mca btl_tcp_if_include $net.0/24 --mca oob_tcp_if_include $net.0/24 \\
    --bind-to none "\$@"
EOF
    chmod +x "$dir/agent" "$dir/on0" "$dir/mpirun" || { down "$name"; exit 1; }
    return 0
}

[ $# -ge 1 ] || usage
case "$1" in
up) [ $# -ge 3 ] || usage; up "$2" "$3" "${4:-}" ;;
down) [ $# -eq 2 ] || usage; down "$2" ;;
pids) [ $# -eq 3 ] || usage; ip netns pids "$(ns "$2" "$3")" ;;
*) usage ;;
esac
