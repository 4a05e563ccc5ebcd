#!/usr/bin/env bash
# Stop the node deploy/start.sh started: SIGTERM, up to 10 s to exit, then SIGKILL. Fine if none runs.
set -euo pipefail

USAGE="usage: deploy/stop.sh [--log-dir log]"
log_dir=log

die() { echo "stop.sh: $*" >&2; exit 1; }
bad_usage() { echo "stop.sh: $*; $USAGE" >&2; exit 2; }

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

while (($#)); do
    case $1 in
        -h | --help) echo "$USAGE"; exit 0 ;;
        --log-dir) (($# >= 2)) || bad_usage "--log-dir needs a value"; log_dir=$2; shift 2 ;;
        --log-dir=*) log_dir=${1#*=}; shift ;;
        *) bad_usage "unknown argument '$1'" ;;
    esac
done

pid_file=$log_dir/node.pid
is_node() { [[ $1 =~ ^[0-9]+$ ]] && tr '\0' ' ' 2>/dev/null <"/proc/$1/cmdline" | grep -q 'main\.py'; }
# start.sh makes the node a session (and process group) leader: its gunicorn worker shares the group.
# Alive = some process of that group that is not a zombie (an unreaped zombie still answers kill -0).
group_alive() {
    local f line state pgrp
    for f in /proc/[0-9]*/stat; do
        { read -r line <"$f"; } 2>/dev/null || continue
        read -r state _ pgrp _ <<<"${line##*) }"
        [[ $pgrp == "$1" && $state != Z ]] && return 0
    done
    return 1
}

if [[ ! -f $pid_file ]]; then
    echo "no node running (no $pid_file)"
    exit 0
fi
pid=$(<"$pid_file")
if ! is_node "$pid"; then
    rm -f "$pid_file"
    echo "no node running (stale $pid_file for pid ${pid:-?} removed)"
    exit 0
fi

kill -TERM "$pid" 2>/dev/null || true # the gunicorn master stops its worker itself
for _ in $(seq 50); do
    group_alive "$pid" || break
    sleep 0.2
done
if group_alive "$pid"; then
    kill -KILL -- "-$pid" 2>/dev/null || true
    sleep 0.2
    group_alive "$pid" && die "pid $pid survived SIGKILL; $pid_file kept"
    rm -f "$pid_file"
    echo "node killed (pid $pid did not exit within 10 s of SIGTERM)"
else
    rm -f "$pid_file"
    echo "node stopped (pid $pid)"
fi
