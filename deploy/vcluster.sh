#!/usr/bin/env bash
# A virtual cluster on one machine: every node of a config in its own network namespace, with its
# config address on one Linux bridge, each link shaped with tc like a port of the cluster's switch.
# The nodes run `python main.py` (port from the config) and `main.py agg` runs from the aggregator's
# namespace, exactly as on CloudLab. Everything it creates is removed at the end, also on failure
# or Ctrl-C. Needs root (ip netns, tc). See deploy/README.md.
set -euo pipefail

USAGE="usage: deploy/vcluster.sh --config FILE [--rate 1gbit] [--delay TIME (none by default; e.g. 0.1ms)] [--scheme none|ckks|bfv|paillier] [--backend tenseal|seal] [--log-dir log]"
die() { echo "vcluster: $*" >&2; exit 1; }
bad_usage() { echo "vcluster: $*; $USAGE" >&2; exit 2; }

config="" rate=1gbit delay="" scheme="" backend="" log_dir=log
while (($#)); do
    case $1 in
        -h | --help) echo "$USAGE"; exit 0 ;;
        --config | --rate | --delay | --scheme | --backend | --log-dir)
            (($# >= 2)) || bad_usage "$1 needs a value"
            opt=$1 value=$2
            shift 2
            ;;
        --config=* | --rate=* | --delay=* | --scheme=* | --backend=* | --log-dir=*)
            opt=${1%%=*} value=${1#*=}
            shift
            ;;
        *) bad_usage "unknown argument '$1'" ;;
    esac
    case $opt in
        --config) config=$value ;;
        --rate) rate=$value ;;
        --delay) delay=$value ;;
        --scheme) scheme=$value ;;
        --backend) backend=$value ;;
        --log-dir) log_dir=$value ;;
    esac
done
[[ -n $config ]] || bad_usage "--config is required"
[[ -f $config ]] || die "config '$config' not found"
config=$(readlink -f "$config")
# the same choices as main.py agg and local (tests/test_cli.py checks they stay so)
case $scheme in "" | none | ckks | bfv | paillier) ;; *) bad_usage "--scheme must be none, ckks, bfv or paillier (got '$scheme')" ;; esac
case $backend in "" | tenseal | seal) ;; *) bad_usage "--backend must be tenseal or seal (got '$backend')" ;; esac
[[ $rate =~ ^[0-9]+(\.[0-9]+)?([kmg]?bit)$ ]] || bad_usage "--rate takes a tc rate such as 1gbit or 100mbit (got '$rate')"
[[ -z $delay || $delay =~ ^[0-9]+(\.[0-9]+)?(us|ms|s)$ ]] || bad_usage "--delay takes a tc time such as 0.1ms (got '$delay')"

log_dir=$(readlink -m "$log_dir") # relative to where it was called from
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

# `python` from PATH, as on a cluster node with the venv active.
PY=$(command -v python || true)
[[ -n $PY ]] || die "no 'python' on PATH: activate the venv first (. .venv/bin/activate)"
# found, not imported (importing torch alone takes 3 s of CPU; the nodes import them soon enough)
"$PY" -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in sys.argv[1:]))" \
    gunicorn flask torch tenseal 2>/dev/null ||
    die "$PY lacks the requirements: activate the venv first (. .venv/bin/activate)"
[[ $(id -u) == 0 ]] || die "needs root (network namespaces and tc): run it with sudo -E env PATH=\"\$PATH\" ..."
command -v ip >/dev/null && command -v tc >/dev/null || die "needs 'ip' and 'tc' (iproute2)"

# The config's nodes, one "address host port role" line each, then "prefix N": the subnet that
# holds them all. A config that cannot run here (nodes sharing a host, names) says why.
plan=$("$PY" -m hefl.control.cluster plan "$config" 2>&1) || die "$config: $(tail -n 1 <<<"$plan" | sed 's/^error: //')"

HOSTS=() PORTS=() AGG="" PREFIX=""
while read -r a b c d; do
    if [[ $a == prefix ]]; then PREFIX=$b; continue; fi
    HOSTS+=("$b") PORTS+=("$c")
    [[ $d != aggregator ]] || AGG=${#HOSTS[@]}
done <<<"$plan"
[[ -n $AGG && -n $PREFIX ]] || die "$config: no aggregator or no subnet in its plan"
AGG=$((AGG - 1))
N=${#HOSTS[@]}

# Names of everything this run creates carry its tag, so that clean-up removes exactly those.
TAG=hv$(printf %04x $(($$ % 65536)))
BR=${TAG}br
WORK=$(mktemp -d "/tmp/vcluster-$TAG-XXXXXX")
PIDS=() AGG_PID="" TEE_PID="" created=0 status=1 have_netem=0

cleanup() {
    trap '' INT TERM HUP
    set +e # a step that fails (a full disk, say) must not skip the removals after it
    if [[ -n $AGG_PID ]] && kill -0 "$AGG_PID" 2>/dev/null; then
        echo "vcluster: stopping the experiment (agg ends it and keeps its logs)" >&2
        kill -TERM "$AGG_PID" 2>/dev/null || true
        for _ in $(seq 150); do kill -0 "$AGG_PID" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$AGG_PID" 2>/dev/null || true # 30 s: agg is stuck; the rest still goes
        wait "$AGG_PID" 2>/dev/null || true
    fi
    keep_outputs
    for pid in "${PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
    for _ in $(seq 50); do
        alive=0
        for pid in "${PIDS[@]}"; do kill -0 -- "-$pid" 2>/dev/null && alive=1; done
        ((alive)) || break
        sleep 0.2
    done
    for pid in "${PIDS[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
    for ((i = 0; i < created; i++)); do
        ns=$TAG-$i
        for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
        ip link del "${TAG}h$i" 2>/dev/null || true # both ends of the pair, now (a namespace's
        ip netns del "$ns" 2>/dev/null || true      # own removal takes them a moment later)
    done
    ip link del "$BR" 2>/dev/null || true
    rm -rf "$WORK" # the run's credential and keys
}
# The run folder gets each node's output and the link settings, however the run ended; a run
# started with sudo leaves its folders to the user who called sudo.
keep_outputs() {
    local experiment dest i
    [[ -f $WORK/agg.out ]] || return 0
    experiment=$(sed -n 's/.*experiment \([A-Za-z0-9._-]*\).*/\1/p' "$WORK/agg.out" | head -n 1)
    if [[ -n $experiment && -d $log_dir/$experiment ]]; then
        dest=$log_dir/$experiment/vcluster
        mkdir -p "$dest"
        for ((i = 0; i < N; i++)); do
            cp "$WORK/nodes/${HOSTS[i]}/node.out" "$dest/${HOSTS[i]}.out" 2>/dev/null || true
        done
        printf '{"rate": "%s", "delay": "%s", "netem": %s, "nodes": %s, "prefix": %s}\n' \
            "$rate" "$delay" "$([[ $have_netem == 1 ]] && echo true || echo false)" "$N" "$PREFIX" >"$dest/links.json"
        [[ -z ${SUDO_UID:-} ]] || chown -R "$SUDO_UID:${SUDO_GID:-$SUDO_UID}" "$log_dir/$experiment"
        echo "vcluster: logs in $log_dir/$experiment (each node's output in vcluster/)"
    else
        echo "vcluster: agg made no log folder; its output:" >&2
        tail -n 5 "$WORK/agg.out" >&2
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# Probe: namespaces may be refused here (a container without CAP_SYS_ADMIN, say).
ip netns add "$TAG-probe" 2>"$WORK/probe.err" ||
    { echo "vcluster: network namespaces are not permitted here: $(head -n 1 "$WORK/probe.err")" >&2; exit 3; }
ip netns del "$TAG-probe"

# tc: a token bucket (rate limit) on both ends of every node's link; a netem delay where the
# kernel has netem (this one may not: then the links get no delay, and it says so).
shape() { # shape NS_OR_EMPTY DEV
    local run=() parent=root
    [[ -z $1 ]] || run=(ip netns exec "$1")
    if [[ -n $delay && $have_netem == 1 ]]; then
        "${run[@]}" tc qdisc add dev "$2" root handle 1: netem delay "$delay"
        parent="parent 1:"
    fi
    # shellcheck disable=SC2086
    "${run[@]}" tc qdisc add dev "$2" $parent handle 10: tbf rate "$rate" burst "$BURST" latency 100ms
}
BURST=$("$PY" -c "
import re, sys
n, unit = re.fullmatch(r'([0-9.]+)([kmg]?)bit', sys.argv[1]).groups()
bps = float(n) * {'': 1, 'k': 1e3, 'm': 1e6, 'g': 1e9}[unit]
print(max(int(bps / 8 / 250), 16 * 1024))  # 4 ms of the rate, at least 16 KiB
" "$rate")

echo "vcluster: $N nodes of $config in namespaces $TAG-0..$((N - 1)) on bridge $BR, links $rate${delay:+, delay $delay}"
ip link add "$BR" type bridge
ip link set "$BR" up
have_netem=0
for ((i = 0; i < N; i++)); do
    ns=$TAG-$i
    ip netns add "$ns"
    created=$((i + 1))
    ip link add "${TAG}h$i" type veth peer name "${TAG}n$i"
    ip link set "${TAG}n$i" netns "$ns"
    ip -n "$ns" link set "${TAG}n$i" name eth0
    ip -n "$ns" addr add "${HOSTS[i]}/$PREFIX" dev eth0
    ip -n "$ns" link set lo up
    ip -n "$ns" link set eth0 up
    ip link set "${TAG}h$i" master "$BR"
    ip link set "${TAG}h$i" up
    if ((i == 0)) && [[ -n $delay ]]; then
        if ip netns exec "$ns" tc qdisc add dev eth0 root netem delay "$delay" 2>"$WORK/netem.err"; then
            ip netns exec "$ns" tc qdisc del dev eth0 root
            have_netem=1
        else
            echo "vcluster: no delay: this kernel has no netem ($(head -n 1 "$WORK/netem.err")); links are rate-limited only" >&2
        fi
    fi
    shape "$ns" eth0         # what the node sends
    shape "" "${TAG}h$i"    # what the node receives
done

# The run's own credential and, for an encrypted run, its own keys; the config the nodes get is
# the user's, with encryption.key_dir pointing at those keys.
"$PY" main.py token --token-file "$WORK/token" >/dev/null
run_config=$WORK/config.json
"$PY" - "$config" "$run_config" "$WORK/keys" <<'EOF'
import json, sys
raw = json.load(open(sys.argv[1]))
raw.setdefault("encryption", {})["key_dir"] = sys.argv[3]
json.dump(raw, open(sys.argv[2], "w"), indent=2)
EOF
effective=$scheme
[[ -n $effective ]] || effective=$("$PY" -c "
import json, sys; print(json.load(open(sys.argv[1])).get('encryption', {}).get('scheme', 'none'))" "$config")
if [[ $effective != none ]]; then
    echo "vcluster: writing $effective keys for this run"
    "$PY" main.py seal --config "$run_config" --scheme "$effective" ${backend:+--backend "$backend"} \
        --key-dir "$WORK/keys" >"$WORK/seal.out" 2>&1 ||
        die "seal failed: $(tail -n 1 "$WORK/seal.out")"
fi

# One node server per namespace, in a session of its own (so clean-up stops gunicorn's master and
# worker together), each with a log folder of its own, as on separate machines.
for ((i = 0; i < N; i++)); do
    mkdir -p "$WORK/nodes/${HOSTS[i]}"
    setsid ip netns exec "$TAG-$i" "$PY" main.py node --host "${HOSTS[i]}" --port "${PORTS[i]}" \
        --token-file "$WORK/token" --log-dir "$WORK/nodes/${HOSTS[i]}/log" \
        >"$WORK/nodes/${HOSTS[i]}/node.out" 2>&1 </dev/null &
    PIDS+=($!)
done

args=(main.py agg --config "$run_config" --token-file "$WORK/token" --log-dir "$log_dir")
[[ -z $scheme ]] || args+=(--scheme "$scheme")
[[ -z $backend ]] || args+=(--backend "$backend")
echo "vcluster: ip netns exec $TAG-$AGG python ${args[*]}"
# tee ignores Ctrl-C, so that agg can still print while it ends the run
exec {agg_out}> >(trap '' INT; exec tee "$WORK/agg.out")
TEE_PID=$!
ip netns exec "$TAG-$AGG" "$PY" "${args[@]}" >&"$agg_out" 2>&1 &
AGG_PID=$!
exec {agg_out}>&- # agg holds the pipe now; tee ends when agg does
set +e
wait "$AGG_PID"
status=$?
set -e
AGG_PID=""
wait "$TEE_PID" 2>/dev/null || true # tee's last lines

exit "$status" # the EXIT trap copies the nodes' output into the run folder and cleans up
