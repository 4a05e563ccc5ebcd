#!/usr/bin/env bash
# Set up the HE library (TenSEAL) in .venv, self-test it, and write the experiment's key material.
#   ./seal.sh [--config config.json] [--scheme ckks|bfv|paillier] [--backend tenseal|seal] [--key-dir keys]
# SEAL-Python (--backend seal) and Paillier (phe, gmpy2) are optional: pip install -r
# requirements-he.txt first (main.py seal says so in one line where they are missing).
# Writes KEY_DIR/secret.ctx (clients only: deploy/keys.yml copies it to them),
# KEY_DIR/keyless.ctx (parameters only, no key) and KEY_DIR/params.json.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if ! .venv/bin/python -c "import tenseal" 2>/dev/null; then
  .venv/bin/pip install -r requirements.txt
fi
exec .venv/bin/python main.py seal "$@"
