#!/usr/bin/env bash
# Drive every host of a config from the aggregator node over ssh/rsync: sync, setup, token, keys,
# firewall, start, stop, status, collect. A host that is this machine runs locally. See deploy/README.md.
set -euo pipefail

USAGE="usage: deploy/cluster.sh {hosts|sync|setup|token|keys|firewall|start|stop|status|collect} [--config config.json] [--user USER] [--dir REMOTE_REPO] [--subnet 10.10.1.0/24] [--only HOST,...]"
COMMANDS=" hosts sync setup token keys firewall start stop status collect "

die() { echo "cluster.sh: $*" >&2; exit 1; }
bad_usage() { echo "cluster.sh: $*; $USAGE" >&2; exit 2; }

CALLER_PWD=$PWD
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."
ROOT=$PWD

command=""
config=config.json
user=${USER:-$(id -un)}
dir=$ROOT
subnet=10.10.1.0/24
only=""
while (($#)); do
    case $1 in
        -h | --help) echo "$USAGE"; exit 0 ;;
        --config) (($# >= 2)) || bad_usage "--config needs a value"; config=$2; shift 2 ;;
        --config=*) config=${1#*=}; shift ;;
        --user) (($# >= 2)) || bad_usage "--user needs a value"; user=$2; shift 2 ;;
        --user=*) user=${1#*=}; shift ;;
        --dir) (($# >= 2)) || bad_usage "--dir needs a value"; dir=$2; shift 2 ;;
        --dir=*) dir=${1#*=}; shift ;;
        --subnet) (($# >= 2)) || bad_usage "--subnet needs a value"; subnet=$2; shift 2 ;;
        --subnet=*) subnet=${1#*=}; shift ;;
        --only) (($# >= 2)) || bad_usage "--only needs a value"; only=$2; shift 2 ;;
        --only=*) only=${1#*=}; shift ;;
        -*) bad_usage "unknown option '$1'" ;;
        *)
            [[ -z $command ]] || bad_usage "one command only (got '$command' and '$1')"
            [[ $COMMANDS == *" $1 "* ]] || bad_usage "unknown command '$1'"
            command=$1
            shift
            ;;
    esac
done
[[ -n $command ]] || bad_usage "no command given"
[[ $dir == /* ]] || die "--dir must be an absolute path (got '$dir')"
[[ $dir != *[[:space:]]* ]] || die "--dir must not contain whitespace (got '$dir')"
dir=${dir%/}
# A relative --config is looked up where the script was called from, then in the repo root.
[[ $config == /* || ! -f $CALLER_PWD/$config ]] || config=$CALLER_PWD/$config
[[ -f $config ]] || die "config '$config' not found (neither in $CALLER_PWD nor in $ROOT)"

if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
command -v "$PY" >/dev/null || die "neither .venv/bin/python nor python3 found"

SSH=(ssh -o BatchMode=yes -o ConnectTimeout=5)
RSYNC_SSH="ssh -o BatchMode=yes -o ConnectTimeout=5"
QDIR=$(printf %q "$dir")
# Prefix of every command run in the repo of a host.
IN_DIR="cd $QDIR 2>/dev/null || { echo 'no $dir on this host (run: deploy/cluster.sh sync)'; exit 1; };"

# ------------------------------------------------------------------ the config's nodes

# One "host port" line per node address (host[:port]; the port defaults to network.port).
nodes_out=$("$PY" - "$config" 2>&1 <<'EOF'
import sys
try:
    from hefl.config import load_config, node_port
    cfg = load_config(sys.argv[1])
    for nid in cfg.nodes:
        host = nid.rsplit(":", 1)[0] if ":" in nid else nid
        print(host, node_port(nid, cfg.network.port), cfg.nodes[nid].type)
except Exception as exc:  # one line, whatever went wrong
    sys.exit(f"error: {exc}")
EOF
) || die "cannot read the nodes of $config: $(tail -n 1 <<<"$nodes_out")"

NODES=() # "host port", one per node
HOSTS=() # distinct hosts, in config order
declare -A PORTS=() # host -> its distinct ports, space separated
declare -A CLIENT_HOSTS=() # hosts with a client node: the only ones that get the secret HE context
while read -r h p role; do
    [[ -n $h ]] || continue
    NODES+=("$h $p")
    [[ $role != client ]] || CLIENT_HOSTS[$h]=1
    if [[ -z ${PORTS[$h]+set} ]]; then HOSTS+=("$h"); PORTS[$h]=$p
    elif [[ " ${PORTS[$h]} " != *" $p "* ]]; then PORTS[$h]+=" $p"; fi
done <<<"$nodes_out"
((${#HOSTS[@]})) || die "$config names no node"

# --only: restrict every command to some hosts of the config (e.g. to retry the ones that failed).
if [[ -n $only ]]; then
    declare -A WANTED=()
    IFS=, read -ra wanted <<<"$only"
    for h in "${wanted[@]}"; do
        [[ -n ${PORTS[$h]+set} ]] || die "--only: '$h' is not a host of $config (see: deploy/cluster.sh hosts)"
        WANTED[$h]=1
    done
    kept=()
    for h in "${HOSTS[@]}"; do [[ -z ${WANTED[$h]+set} ]] || kept+=("$h"); done
    HOSTS=("${kept[@]}")
    kept=()
    for n in "${NODES[@]}"; do [[ -z ${WANTED[${n% *}]+set} ]] || kept+=("$n"); done
    NODES=("${kept[@]}")
fi

# This machine's addresses: a host among them runs locally, not over ssh. HEFL_LOCAL_ADDRS replaces
# the list (space separated; for tests, e.g. "none" to reach 127.0.0.1 over ssh too).
if [[ -n ${HEFL_LOCAL_ADDRS:-} ]]; then
    LOCAL_ADDRS=" $HEFL_LOCAL_ADDRS "
    is_local() { [[ $LOCAL_ADDRS == *" $1 "* ]]; }
else
    LOCAL_ADDRS=" $(hostname -I 2>/dev/null || true) localhost ::1 $(hostname 2>/dev/null || true) "
    is_local() { [[ $LOCAL_ADDRS == *" $1 "* || $1 == 127.* ]]; }
fi
target() { echo "${user:+$user@}$1"; }

# Run a bash command line on HOST: here when HOST is this machine, else over ssh (through bash
# whatever the login shell there).
on_host() { # host command
    if is_local "$1"; then bash -c "$2"; else "${SSH[@]}" "$(target "$1")" "bash -c $(printf %q "$2")"; fi
}

# The one port of HOST's node; fails when the config puts several nodes on one host.
one_port() {
    local ports=${PORTS[$1]}
    [[ $ports != *" "* ]] || { echo "several nodes on this host (ports $ports); deploy/ runs one node per host" >&2; return 1; }
    echo "$ports"
}

# ------------------------------------------------------------------ one function per command and host

do_sync() {
    local h=$1
    # key material never travels with the code: `keys` sends each host only what its role may hold
    local excludes=(--exclude=/.venv --exclude=/log --exclude=/.git --exclude=__pycache__/
        --exclude=.pytest_cache/ --exclude=.mypy_cache/ --exclude=.ruff_cache/
        --exclude='/keys/*.ctx' --exclude=/keys/params.json --exclude='/keys/local-*')
    if is_local "$h"; then
        [[ $dir != "$ROOT" ]] || { echo "this machine is the source"; return 0; }
        mkdir -p "$dir" && rsync -a "${excludes[@]}" ./ "$dir/"
    else
        "${SSH[@]}" "$(target "$h")" "mkdir -p $QDIR" && rsync -az -e "$RSYNC_SSH" "${excludes[@]}" ./ "$(target "$h"):$dir/"
    fi
    echo "synced to $dir"
}

do_setup() {
    on_host "$1" "$IN_DIR { test -f requirements.txt || { echo 'no requirements.txt in $dir (run sync first)'; exit 1; }; } \
        && python3 -m venv .venv && .venv/bin/pip install --disable-pip-version-check -r requirements.txt \
        && echo \"venv ready: \$(.venv/bin/python --version)\""
}

do_token() {
    local h=$1
    if is_local "$h" && [[ $dir == "$ROOT" ]]; then echo "this machine holds keys/token"; return 0; fi
    on_host "$h" "mkdir -p $QDIR/keys && chmod 700 $QDIR/keys && umask 077 \
        && cat >$QDIR/keys/token.new && chmod 600 $QDIR/keys/token.new && mv -f $QDIR/keys/token.new $QDIR/keys/token \
        && echo 'keys/token copied (mode 600)'" <keys/token
}

do_keys() { # clients get secret.ctx; every host gets keyless.ctx and params.json, and loses any secret.ctx
    local h=$1 files=(keys/keyless.ctx keys/params.json)
    [[ -z ${CLIENT_HOSTS[$h]+set} ]] || files+=(keys/secret.ctx)
    if is_local "$h" && [[ $dir == "$ROOT" ]]; then echo "this machine holds the key folder"; return 0; fi
    on_host "$h" "mkdir -p $QDIR/keys && chmod 700 $QDIR/keys && rm -f $QDIR/keys/secret.ctx" || return 1
    if is_local "$h"; then
        cp -p "${files[@]}" "$dir/keys/"
    else
        rsync -a -e "$RSYNC_SSH" --chmod=F600 "${files[@]}" "$(target "$h"):$dir/keys/"
    fi
    echo "copied ${files[*]##*/}"
}

do_firewall() {
    local port args
    port=$(one_port "$1") || return 1
    args="--port $port --subnet $(printf %q "$subnet")"
    on_host "$1" "$IN_DIR if [ \"\$(id -u)\" = 0 ]; then bash deploy/firewall.sh $args; \
        else sudo -n bash deploy/firewall.sh $args; fi"
}

do_start() {
    local port
    port=$(one_port "$1") || return 1
    on_host "$1" "$IN_DIR bash deploy/start.sh --port $port"
}

do_stop() { on_host "$1" "$IN_DIR bash deploy/stop.sh"; }

do_status() { # "host port": the node's /health, asked from here (with the credential: all of it)
    local h=${1% *} p=${1#* }
    [[ $h == *:* ]] && h="[$h]"
    if [[ -f keys/token ]]; then # the header through stdin: not on a command line others can see
        printf 'X-Hefl-Token: %s\n' "$(<keys/token)" | curl -fsS --max-time 5 -H @- "http://$h:$p/health"
    else
        curl -fsS --max-time 5 "http://$h:$p/health"
    fi
}

do_collect() {
    local h=$1 into=log/nodes/$1
    local excludes=(--exclude=/nodes --exclude=/cluster --exclude=/node.pid)
    mkdir -p "$into"
    if is_local "$h"; then
        rsync -a "${excludes[@]}" "$dir/log/" "$into/"
    else
        rsync -az -e "$RSYNC_SSH" "${excludes[@]}" "$(target "$h"):$dir/log/" "$into/"
    fi
    echo "$(find "$into" -type f | wc -l) files in $into"
}

# ------------------------------------------------------------------ run a command on every host

# Run do_COMMAND for every item in parallel, output to log/cluster/COMMAND/ITEM.log; report
# OK/FAILED per item, in order, with the last output line as reason; fail if any failed.
run_all() { # command items...
    local cmd=$1 out=log/cluster/$1 i item line failed=0
    shift
    local items=("$@") pids=()
    mkdir -p "$out"
    echo "$cmd: ${#items[@]} target(s) in parallel, output in $out/"
    for i in "${!items[@]}"; do
        ("do_$cmd" "${items[$i]}") </dev/null >"$out/${items[$i]// /_}.log" 2>&1 &
        pids[i]=$!
    done
    for i in "${!items[@]}"; do
        item=${items[$i]}
        if wait "${pids[$i]}"; then
            line=$(grep -v '^[[:space:]]*$' "$out/${item// /_}.log" | tail -n 1 | cut -c1-300 || true)
            printf 'OK      %-22s %s%s\n' "${item/ /:}" "$(is_local "${item% *}" && echo '(here) ')" "$line"
        else
            line=$(grep -v '^[[:space:]]*$' "$out/${item// /_}.log" | tail -n 1 | cut -c1-300 || true)
            printf 'FAILED  %-22s %s\n' "${item/ /:}" "${line:-no output (exit status only)}"
            failed=$((failed + 1))
        fi
    done
    if ((failed)); then
        echo "$cmd: $failed of ${#items[@]} failed (details in $out/)" >&2
        return 1
    fi
    echo "$cmd: all ${#items[@]} OK"
}

case $command in
    hosts)
        for h in "${HOSTS[@]}"; do
            printf '%-16s port %s%s\n' "$h" "${PORTS[$h]// /,}" "$(is_local "$h" && echo '  (this machine: runs locally)')"
        done
        ;;
    sync | collect)
        command -v rsync >/dev/null || die "rsync not found (apt-get install rsync)"
        [[ $command == collect || -f keys/token ]] || echo "note: keys/token missing; run '$0 token' to create and copy it"
        run_all "$command" "${HOSTS[@]}"
        ;;
    token)
        if [[ ! -f keys/token ]]; then "$PY" main.py token; fi
        [[ -s keys/token ]] || die "keys/token is empty"
        chmod 700 keys && chmod 600 keys/token
        run_all token "${HOSTS[@]}"
        ;;
    keys)
        for f in keys/secret.ctx keys/keyless.ctx keys/params.json; do
            [[ -f $f ]] || die "$f missing: run ./seal.sh (with the config's scheme) first"
        done
        run_all keys "${HOSTS[@]}"
        mine=no
        for h in "${!CLIENT_HOSTS[@]}"; do if is_local "$h"; then mine=yes; fi; done
        if [[ $mine == no && -z $only ]]; then
            rm -f keys/secret.ctx
            echo "removed keys/secret.ctx here: this machine runs no client, and only clients hold the secret key"
        fi
        ;;
    firewall)
        # Every node must reach every other node: refuse a subnet that leaves one of them out.
        check=$("$PY" - "$subnet" "${HOSTS[@]}" 2>&1 <<'EOF'
import ipaddress, sys
try:
    net = ipaddress.ip_network(sys.argv[1], strict=False)
except ValueError as exc:
    sys.exit(f"invalid --subnet: {exc}")
for host in sys.argv[2:]:
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        print("name", host)
        continue
    if addr not in net and not addr.is_loopback:
        print("out", host)
EOF
        ) || die "$check"
        outside=$(awk '$1 == "out" {printf "%s ", $2}' <<<"$check")
        names=$(awk '$1 == "name" {printf "%s ", $2}' <<<"$check")
        [[ -z $outside ]] || die "not inside --subnet $subnet, their traffic would be dropped: ${outside% }"
        [[ -z $names ]] || echo "warning: not IP addresses, cannot check they are inside --subnet $subnet: ${names% }" >&2
        run_all firewall "${HOSTS[@]}"
        ;;
    status)
        command -v curl >/dev/null || die "curl not found (apt-get install curl)"
        run_all status "${NODES[@]}"
        ;;
    *)
        run_all "$command" "${HOSTS[@]}"
        ;;
esac
