#!/usr/bin/env python3
"""Ansible's inventory, made from the experiment config: one host per machine of config.json, named
by its experiment address (10.10.1.x), in the groups clients, switches and aggregator.

What ssh reaches each address by comes from deploy/cluster.json (see deploy/README.md, "Settings";
$HEFL_CLUSTER names another file); without it, ssh goes to the experiment addresses themselves,
which works from a machine inside the experiment's LAN. $HEFL_CONFIG overrides the settings' config.
Ansible runs this with --list (or --host NAME)."""

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    sys.path.insert(0, str(ROOT))
    try:
        from hefl.config import load_config
        from hefl.control.cluster import inventory, load_settings
        from hefl.errors import HeflError
    except ImportError:  # run by a python without the project's packages: use the project's venv
        venv = ROOT / ".venv" / "bin" / "python"
        if venv.is_file() and Path(sys.executable).resolve() != venv.resolve():
            os.execv(str(venv), [str(venv), __file__, *sys.argv[1:]])
        raise
    if len(sys.argv) == 3 and sys.argv[1] == "--host":
        print("{}")  # every host's variables come with --list (_meta)
        return 0
    if sys.argv[1:] != ["--list"]:
        print("usage: deploy/inventory.py --list | --host NAME", file=sys.stderr)
        return 2
    settings_path = Path(os.environ.get("HEFL_CLUSTER") or ROOT / "deploy" / "cluster.json")
    try:
        settings = load_settings(settings_path)
        config = Path(os.environ.get("HEFL_CONFIG") or settings.get("config") or "config.json")
        if not config.is_absolute():
            config = ROOT / config
        inv = inventory(load_config(config), settings, str(config))
    except HeflError as exc:
        print(f"inventory: {exc}", file=sys.stderr)
        return 1
    json.dump(inv, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
