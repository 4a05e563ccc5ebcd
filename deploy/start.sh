#!/usr/bin/env bash
# Start this machine's node in the background (it survives logout) and wait until /health answers.
# pid in LOG_DIR/node.pid, output appended to LOG_DIR/node.out; deploy/stop.sh stops it. See deploy/README.md.
set -euo pipefail

USAGE="usage: deploy/start.sh [--port 5000] [--host 0.0.0.0] [--log-dir log] [--wait 15]"
port=5000
host=0.0.0.0
log_dir=log
wait_s=15

die() { echo "start.sh: $*" >&2; exit 1; }
bad_usage() { echo "start.sh: $*; $USAGE" >&2; exit 2; }

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

while (($#)); do
    case $1 in
        -h | --help) echo "$USAGE"; exit 0 ;;
        --port) (($# >= 2)) || bad_usage "--port needs a value"; port=$2; shift 2 ;;
        --port=*) port=${1#*=}; shift ;;
        --host) (($# >= 2)) || bad_usage "--host needs a value"; host=$2; shift 2 ;;
        --host=*) host=${1#*=}; shift ;;
        --log-dir) (($# >= 2)) || bad_usage "--log-dir needs a value"; log_dir=$2; shift 2 ;;
        --log-dir=*) log_dir=${1#*=}; shift ;;
        --wait) (($# >= 2)) || bad_usage "--wait needs a value"; wait_s=$2; shift 2 ;;
        --wait=*) wait_s=${1#*=}; shift ;;
        *) bad_usage "unknown argument '$1'" ;;
    esac
done

valid_port() { [[ $1 =~ ^[0-9]{1,5}$ ]] && ((10#$1 >= 1 && 10#$1 <= 65535)); }
valid_port "$port" || die "invalid --port '$port' (1-65535)"
port=$((10#$port))
[[ -n $host ]] || die "--host must not be empty"
[[ -n $log_dir ]] || die "--log-dir must not be empty"
[[ $wait_s =~ ^[0-9]+$ ]] || die "invalid --wait '$wait_s' (whole seconds)"
command -v curl >/dev/null || die "curl not found (apt-get install curl)"

if [[ -x .venv/bin/python ]]; then
    py=.venv/bin/python
elif command -v python3 >/dev/null; then
    py=python3
else
    die "neither .venv/bin/python nor python3 found (run deploy/cluster.sh setup)"
fi

pid_file=$log_dir/node.pid
out=$log_dir/node.out

# A pid counts only while it is alive and still our node (pids get reused after a reboot).
is_node() { [[ $1 =~ ^[0-9]+$ ]] && tr '\0' ' ' 2>/dev/null <"/proc/$1/cmdline" | grep -q 'main\.py'; }

if [[ -f $pid_file ]]; then
    old=$(<"$pid_file")
    if is_node "$old"; then
        die "a node is already running (pid $old, $pid_file); stop it first with deploy/stop.sh"
    fi
    echo "removing stale $pid_file (pid ${old:-?} is not running)"
    rm -f "$pid_file"
fi

mkdir -p "$log_dir"
[[ -f keys/token ]] || echo "start.sh: warning: keys/token missing, the node accepts requests from anyone (run deploy/cluster.sh token)" >&2
offset=$(stat -c %s "$out" 2>/dev/null || echo 0) # the tail on failure shows this start only
echo "--- $(date '+%F %T') deploy/start.sh: $py main.py node --host $host --port $port --log-dir $log_dir" >>"$out"

# setsid: own session, no controlling terminal, so logout (SIGHUP) does not reach it; nohup for good measure.
# The inner shell writes its own pid (exec keeps it) so the pid file names the node even if setsid forks.
# shellcheck disable=SC2016  # $$ and $1 belong to the inner shell
PYTHONUNBUFFERED=1 setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' start-node "$pid_file" \
    nohup "$py" main.py node --host "$host" --port "$port" --log-dir "$log_dir" --token-file keys/token -v \
    >>"$out" 2>&1 </dev/null &

for _ in $(seq 50); do [[ -s $pid_file ]] && break; sleep 0.1; done
[[ -s $pid_file ]] || die "node did not start (no $pid_file); see $out"
pid=$(<"$pid_file")

case $host in 0.0.0.0 | :: | '[::]') probe=127.0.0.1 ;; *) probe=$host ;; esac
[[ $probe == *:* ]] && probe="[$probe]"
url=http://$probe:$port/health

deadline=$((SECONDS + wait_s))
while :; do
    if body=$(curl -fsS --max-time 2 "$url" 2>/dev/null); then
        echo "node started: pid $pid, $host:$port, log $out"
        echo "health: $body"
        exit 0
    fi
    if ! is_node "$pid"; then
        rm -f "$pid_file"
        echo "start.sh: the node exited during startup; last lines of $out:" >&2
        tail -c "+$((offset + 1))" "$out" | tail -n 20 >&2
        exit 1
    fi
    ((SECONDS < deadline)) || break
    sleep 0.5
done
echo "start.sh: no answer from $url within ${wait_s}s (node still running as pid $pid; deploy/stop.sh stops it); last lines of $out:" >&2
tail -c "+$((offset + 1))" "$out" | tail -n 20 >&2
exit 1
