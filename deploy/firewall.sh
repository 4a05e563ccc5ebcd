#!/usr/bin/env bash
# Restrict a node's port to the cluster subnet and loopback, in a dedicated iptables chain.
# Run as root on the node itself (deploy/cluster.sh firewall does it on every node). See deploy/README.md.
set -euo pipefail

USAGE="usage: deploy/firewall.sh [--port 5000] [--subnet 10.10.1.0/24] [--remove] [--dry-run]"
CHAIN=HEFL
port=5000
subnet=10.10.1.0/24
remove=0
dry_run=0

die() { echo "firewall.sh: $*" >&2; exit 1; }
bad_usage() { echo "firewall.sh: $*; $USAGE" >&2; exit 2; }

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

while (($#)); do
    case $1 in
        -h | --help) echo "$USAGE"; exit 0 ;;
        --port) (($# >= 2)) || bad_usage "--port needs a value"; port=$2; shift 2 ;;
        --port=*) port=${1#*=}; shift ;;
        --subnet) (($# >= 2)) || bad_usage "--subnet needs a value"; subnet=$2; shift 2 ;;
        --subnet=*) subnet=${1#*=}; shift ;;
        --remove) remove=1; shift ;;
        --dry-run) dry_run=1; shift ;;
        *) bad_usage "unknown argument '$1'" ;;
    esac
done

valid_port() { [[ $1 =~ ^[0-9]{1,5}$ ]] && ((10#$1 >= 1 && 10#$1 <= 65535)); }
valid_port "$port" || die "invalid --port '$port' (1-65535)"
port=$((10#$port))
[[ $subnet =~ ^([0-9]{1,3}\.){3}[0-9]{1,3}(/[0-9]{1,2})?$ ]] || die "invalid --subnet '$subnet' (IPv4 address or CIDR, e.g. 10.10.1.0/24)"

if ((dry_run)); then
    run() { echo "+ $*"; }
else
    ((EUID == 0)) || die "must run as root (try: sudo deploy/firewall.sh ...)"
    command -v iptables >/dev/null || die "iptables not found (apt-get install iptables)"
    run() { "$@"; }
fi

# ip6tables is best effort: the node listens on IPv4 (0.0.0.0) unless started with --host ::.
have_ip6=0
if ((dry_run)) || { command -v ip6tables >/dev/null && ip6tables -w -S INPUT >/dev/null 2>&1; }; then
    have_ip6=1
fi

chain_exists() { ((dry_run)) && return 1; "$1" -w -S "$CHAIN" >/dev/null 2>&1; }
jump_exists() { ((dry_run)) && return 1; "$1" -w -C INPUT -j "$CHAIN" >/dev/null 2>&1; }

remove_chain() { # iptables|ip6tables
    local ipt=$1 n=0
    if ((dry_run)); then run "$ipt" -w -D INPUT -j "$CHAIN"; n=1; fi
    while jump_exists "$ipt"; do run "$ipt" -w -D INPUT -j "$CHAIN"; n=$((n + 1)); done
    if chain_exists "$ipt" || ((dry_run)); then
        run "$ipt" -w -F "$CHAIN"
        run "$ipt" -w -X "$CHAIN"
        echo "$ipt: $( ((dry_run)) && echo 'would remove' || echo removed) chain $CHAIN and $n jump(s) from INPUT"
    else
        echo "$ipt: no chain $CHAIN, nothing to remove"
    fi
}

install_chain() { # iptables|ip6tables, then the ACCEPT rules' match arguments, one string each
    local ipt=$1 match
    shift
    if chain_exists "$ipt"; then run "$ipt" -w -F "$CHAIN"; else run "$ipt" -w -N "$CHAIN"; fi
    for match in "$@"; do
        # shellcheck disable=SC2086  # $match holds several words on purpose
        run "$ipt" -w -A "$CHAIN" $match -p tcp --dport "$port" -j ACCEPT
    done
    run "$ipt" -w -A "$CHAIN" -p tcp --dport "$port" -j DROP
    jump_exists "$ipt" || run "$ipt" -w -I INPUT 1 -j "$CHAIN"
}

if ((remove)); then
    remove_chain iptables
    if ((have_ip6)); then remove_chain ip6tables; fi
    exit 0
fi

install_chain iptables "-i lo" "-s 127.0.0.1" "-s $subnet"
if ((have_ip6)); then
    install_chain ip6tables "-i lo" || echo "firewall.sh: warning: ip6tables rules not applied" >&2
fi

if ((dry_run)); then
    echo "dry run: nothing changed"
else
    echo "iptables rules of chain $CHAIN (INPUT jumps to it first):"
    iptables -w -S "$CHAIN" | sed 's/^/  /'
fi
v6=""
((have_ip6)) && v6=" (IPv6: loopback only)"
echo "TCP port $port: allowed from $subnet and 127.0.0.1 (loopback), dropped from everywhere else$v6"
echo "undo with: deploy/firewall.sh --remove (rules do not survive a reboot)"
