#!/usr/bin/env bash
# The controller (the machine that runs ansible-playbook) on a fresh Ubuntu 22.04 or 24.04: a final
# release of Python 3.11 to 3.13, the checkout's .venv with requirements.txt and
# deploy/requirements.txt (ansible-core). Ubuntu 22.04's python3 is 3.10, which the pinned numpy,
# TenSEAL, scikit-learn, matplotlib and ansible-core refuse, and its own python3.11 is a release
# candidate (3.11.0~rc1): there it installs python3.12 from the deadsnakes PPA. Safe to run again:
# it installs only what is missing.
#
#   deploy/bootstrap.sh [--dry-run] [--python PYTHON] [--venv DIR] [--torch auto|cpu|cuda|keep]
#
# --dry-run prints the plan and changes nothing; --python uses that interpreter instead of
# installing one (any Linux); --torch as setup.yml's torch_build (auto: the CPU build unless the
# machine has an NVIDIA GPU). deploy/README.md, step 2.
set -Eeuo pipefail
trap 'echo "bootstrap: error: line $LINENO: $BASH_COMMAND failed" >&2' ERR

here=${BASH_SOURCE[0]%/*}
[[ $here == "${BASH_SOURCE[0]}" ]] && here=.
ROOT=$(cd "$here/.." && pwd)
OS_RELEASE=/etc/os-release  # --os-release FILE: another one (the tests' fake releases)
PPA=ppa:deadsnakes/ppa
TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
dry_run=false
python=""
venv=$ROOT/.venv
torch=auto

die() {
    echo "bootstrap: error: $*" >&2
    exit 1
}

say() {
    echo "bootstrap: $*"
}

usage() {
    echo "usage: deploy/bootstrap.sh [--dry-run] [--python PYTHON] [--venv DIR] [--torch auto|cpu|cuda|keep]" >&2
    exit 2
}

while (($#)); do
    case $1 in
        --dry-run) dry_run=true ;;
        --python) (($# > 1)) || usage; python=$2; shift ;;
        --venv) (($# > 1)) || usage; venv=$2; shift ;;
        --torch) (($# > 1)) || usage; torch=$2; shift ;;
        --os-release) (($# > 1)) || usage; OS_RELEASE=$2; shift ;;
        -h | --help) usage ;;
        *) echo "bootstrap: unknown argument '$1'" >&2; usage ;;
    esac
    shift
done
case $torch in auto | cpu | cuda | keep) ;; *) die "--torch must be auto, cpu, cuda or keep, not '$torch'" ;; esac
[[ $venv == /* ]] || venv=$PWD/$venv

# "3.12 final" for a Python; nothing when it does not run
py_version() {
    "$1" -c 'import sys; v = sys.version_info; print("%d.%d %s" % (v[0], v[1], v[3]))' 2>/dev/null || true
}

# whether a version line is a final release of 3.11 to 3.13
usable() {
    case $1 in "3.11 final" | "3.12 final" | "3.13 final") return 0 ;; *) return 1 ;; esac
}

can_venv() {
    "$1" -c 'import ensurepip, venv' >/dev/null 2>&1
}

# ID, VERSION_ID and PRETTY_NAME of the release, read without running the file
read_release() {
    ID="" VERSION_ID="" PRETTY_NAME=""
    [[ -r $OS_RELEASE ]] || return 0
    local key value
    while IFS='=' read -r key value; do
        value=${value#[\"\']} value=${value%[\"\']}
        case $key in ID | VERSION_ID | PRETTY_NAME) printf -v "$key" '%s' "$value" ;; esac
    done <"$OS_RELEASE"
}

# sets PY (the Python for the venv), APT (packages to install), ADD_PPA and WHY
choose_python() {
    APT=() ADD_PPA="" WHY=""
    local release="${ID:-unknown} ${VERSION_ID:-}"
    if [[ -n $python ]]; then
        local v
        v=$(py_version "$python")
        usable "$v" || die "--python $python is ${v:-not a Python that runs}: a final release of Python 3.11-3.13 is needed"
        PY=$python WHY="the Python given (--python)"
        return
    fi
    case $release in
        "ubuntu 24.04")
            PY=python3.12 WHY="Ubuntu 24.04's own python3.12"
            can_venv python3.12 || APT=(python3.12 python3.12-venv)
            ;;
        "ubuntu 22.04")
            PY=python3.12
            WHY="Ubuntu 22.04's python3 is 3.10 (the pins need 3.11+) and its python3.11 a release candidate: python3.12 from the deadsnakes PPA"
            if ! can_venv python3.12; then
                APT=(python3.12 python3.12-venv)
                ADD_PPA=$PPA
            fi
            ;;
        *)
            local p
            for p in python3.13 python3.12 python3.11 python3; do
                if command -v "$p" >/dev/null && usable "$(py_version "$p")"; then
                    PY=$p WHY="found on PATH; this script installs one on Ubuntu 22.04 and 24.04 only"
                    return
                fi
            done
            die "unsupported release '${PRETTY_NAME:-$release}' without a Python 3.11-3.13: this script installs one on Ubuntu 22.04 and 24.04 only; elsewhere install one and run it with --python PYTHON"
            ;;
    esac
}

# torch's pin in requirements.txt
torch_pin() {
    local line
    while IFS= read -r line; do
        if [[ $line =~ ^torch==([^[:space:]#]+) ]]; then
            echo "${BASH_REMATCH[1]}"
            return
        fi
    done <"$ROOT/requirements.txt"
    die "no torch==VERSION line in $ROOT/requirements.txt"
}

# sets TORCH_STEP: "cpu" (install the CPU build first), "cuda" (replace a CPU build) or ""
choose_torch() {
    TORCH_STEP="" PIN=$(torch_pin)
    local want=$torch now=""
    if [[ $want == auto ]]; then
        want=cpu
        if command -v nvidia-smi >/dev/null && [[ $(nvidia-smi -L 2>/dev/null) == *GPU* ]]; then
            want=cuda
        fi
    fi
    if [[ -x $venv/bin/python ]]; then
        now=$("$venv/bin/python" -c 'from importlib.metadata import version; print(version("torch"))' 2>/dev/null || true)
    fi
    if [[ $want == cpu && ! ($now == "$PIN"* && $now == *+cpu*) ]]; then
        TORCH_STEP=cpu
    elif [[ $want == cuda && $now == *+cpu* ]]; then
        TORCH_STEP=cuda
    fi
}

# a venv that is there already must be of a usable Python (an earlier `python3 -m venv .venv` on
# Ubuntu 22.04 made one of 3.10)
check_venv() {
    [[ -e $venv ]] || return 0
    [[ -x $venv/bin/python ]] || die "$venv exists but has no bin/python: remove it (rm -rf $venv) and run again"
    local v
    v=$(py_version "$venv/bin/python")
    usable "$v" || die "$venv is Python ${v:-unknown} (3.11-3.13 needed): remove it (rm -rf $venv) and run again"
}

plan() {
    say "${PRETTY_NAME:-unknown release}: Python: $PY ($WHY)"
    if [[ -n $ADD_PPA ]]; then
        say "apt: add $ADD_PPA; install ${APT[*]}"
    elif ((${#APT[@]})); then
        say "apt: install ${APT[*]}"
    else
        say "apt: nothing to install ($PY can make a venv)"
    fi
    if [[ -e $venv ]]; then say "venv: $venv (there already)"; else say "venv: $venv, made by $PY"; fi
    case $TORCH_STEP in
        cpu) say "torch: the CPU build of $PIN from $TORCH_CPU_INDEX (a CUDA build is several GB)" ;;
        cuda) say "torch: the CUDA build of $PIN from PyPI, replacing the CPU build" ;;
        *) say "torch: as requirements.txt brings it ($PIN)" ;;
    esac
    say "pip: install -r requirements.txt -r deploy/requirements.txt"
}

apt_install() {
    local sudo=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null || die "installing ${APT[*]} needs root: run as root or install sudo"
        sudo=(sudo)
    fi
    local apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 -y -qq)
    "${apt[@]}" update || die "apt-get update failed (see above)"
    if [[ -n $ADD_PPA ]]; then
        if ! command -v add-apt-repository >/dev/null; then
            "${apt[@]}" install software-properties-common || die "could not install software-properties-common (add-apt-repository)"
        fi
        "${sudo[@]}" add-apt-repository -y "$ADD_PPA" || die "could not add $ADD_PPA (no route to launchpad.net?): install a Python 3.11-3.13 another way and run again with --python PYTHON"
        "${apt[@]}" update || die "apt-get update failed after adding $ADD_PPA (see above)"
    fi
    "${apt[@]}" install "${APT[@]}" || die "apt could not install ${APT[*]} (see above)"
}

main() {
    read_release
    choose_python
    check_venv
    choose_torch
    plan
    if $dry_run; then
        say "dry run: nothing done"
        return
    fi
    ((${#APT[@]} == 0)) || apt_install
    local v
    v=$(py_version "$PY")
    usable "$v" || die "$PY is ${v:-not a Python that runs} after the install: a final release of Python 3.11-3.13 is needed"
    can_venv "$PY" || die "$PY cannot make a venv (no ensurepip): install its venv package (python${v% *}-venv on Debian and Ubuntu)"
    [[ -e $venv ]] || "$PY" -m venv "$venv" || die "$PY -m venv $venv failed (see above)"
    local pip=("$venv/bin/python" -m pip install -q)
    case $TORCH_STEP in
        cpu) "${pip[@]}" --force-reinstall --no-deps "torch==$PIN" --index-url "$TORCH_CPU_INDEX" || die "torch's CPU build did not install (see above)" ;;
        cuda) "${pip[@]}" --force-reinstall --no-deps "torch==$PIN" || die "torch's CUDA build did not install (see above)" ;;
    esac
    "${pip[@]}" -r "$ROOT/requirements.txt" -r "$ROOT/deploy/requirements.txt" || die "pip could not install the requirements (see above)"
    "$venv/bin/python" -c 'import numpy, tenseal, torch, flask, ansible' || die "the venv's packages do not import (see above)"
    local ansible
    ansible=$("$venv/bin/ansible-playbook" --version) || die "ansible-playbook does not run (see above)"
    say "done: $("$venv/bin/python" --version), ${ansible%%$'\n'*}, in $venv"
    say "next: . $venv/bin/activate; cp deploy/cluster.example.json deploy/cluster.json (deploy/README.md, step 2)"
}

main
