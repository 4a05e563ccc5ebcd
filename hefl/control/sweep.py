"""`main.py sweep sweep.json`: a grid of local experiments, one after another, then compared.

A sweep file:

    {"config": "../config.json",
     "grid": {"encryption.scheme": ["none", "ckks"], "others.*.dumb": [false, true]},
     "repeat": 1}

`config` is relative to the sweep file. Grid keys are dotted paths into the config;
`others.*.KEY` sets KEY on every node of `others` that has it (`dumb` on every switch);
`others.*.clients` makes every client node host that many logical clients (client_number and the
slice indexes follow), `others.*.local_sum` sets local_sum on every client node. Every
combination of the values is one cell, run `repeat` times.
"""

from __future__ import annotations

import copy
import itertools
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from hefl.config import host_clients, parse_config, read_raw
from hefl.crypto import require
from hefl.errors import ConfigError, HeflError
from hefl.files import write_json_atomic


@dataclass(frozen=True)
class SweepFile:
    """A sweep file: the config it varies (a path relative to the file), the grid of dotted keys
    to values, and how many runs each cell has."""

    grid: dict[str, list[Any]]
    config: str = "config.json"
    repeat: int = 1


SWEEP_KEYS = {f.name for f in fields(SweepFile)}


@dataclass
class CellRun:
    """One run of a cell in sweep.json: the cell's number, the repeat, the grid's values, and how
    it ended: `status` finished (its `run` folder), failed (its `error`) or interrupted."""

    cell: int
    repeat: int
    values: dict[str, Any]
    run: str | None = None
    status: str | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """As sweep.json holds it: only what is known."""
        return {k: v for k, v in vars(self).items() if v is not None}


@dataclass
class SweepRecord:
    """sweep.json: the sweep file, its config, grid and repeat count, and its cells' runs so
    far."""

    sweep: str
    config: str
    grid: dict[str, list[Any]]
    repeat: int
    cells: list[CellRun] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self), cells=[c.to_json() for c in self.cells])


def read_sweep(path: Path) -> tuple[Path, dict[str, list[Any]], int]:
    """The sweep file's config path, grid and repeat count; anything malformed is a ConfigError
    naming the file."""
    try:
        spec = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError(f"{path}: not JSON: {exc}") from None
    if not isinstance(spec, dict) or set(spec) - SWEEP_KEYS or "grid" not in spec:
        raise ConfigError(
            f"{path}: a sweep is an object with keys {sorted(SWEEP_KEYS)} (grid required)"
        )
    sweep = SweepFile(**spec)
    grid = sweep.grid
    if not isinstance(grid, dict) or not grid:
        raise ConfigError(f"{path}: grid must be an object of dotted keys to lists of values")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}: grid[{key!r}] must be a non-empty list of values")
    repeat = sweep.repeat
    if not isinstance(repeat, int) or isinstance(repeat, bool) or not 1 <= repeat <= 100:
        raise ConfigError(f"{path}: repeat must be a whole number from 1 to 100")
    config = sweep.config
    if not isinstance(config, str):
        raise ConfigError(f"{path}: config must be a path (relative to the sweep file)")
    return path.parent / config, grid, repeat


def cells(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, the first key varying slowest."""
    keys = list(grid)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*grid.values())]


def apply(raw: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the raw config with each dotted key set; a path that does not fit the config is a
    ConfigError naming it."""
    out = copy.deepcopy(dict(raw))
    for key, value in values.items():
        parts = key.split(".")
        if key == "others.*.clients":  # clients per client node: the slices are numbered again
            out = host_clients(out, value)
            continue
        if key == "others.*.local_sum":  # every client node (one hosting one client: no change)
            for node in out.get("others", {}).values():
                if isinstance(node, dict) and node.get("type") == "client":
                    node["local_sum"] = copy.deepcopy(value)
            continue
        if len(parts) == 3 and parts[:2] == ["others", "*"]:
            nodes = [n for n in out.get("others", {}).values() if isinstance(n, dict)]
            hit = [n for n in nodes if parts[2] in n]
            if not hit:
                raise ConfigError(f"grid key {key!r}: no node of `others` has {parts[2]!r}")
            for node in hit:
                node[parts[2]] = copy.deepcopy(value)
            continue
        here = out
        for part in parts[:-1]:
            nxt = here.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"grid key {key!r}: {part!r} is not a section")
            here = nxt
        here[parts[-1]] = copy.deepcopy(value)
    return out


def label(values: Mapping[str, Any], grid: Mapping[str, Sequence[Any]] | None = None) -> str:
    """A cell's name in the comparison: `key=value` for each grid key that varies (of more than
    one value; every key where none varies), each key by its last part unless two share it, a
    string value bare (`scheme=ckks`), any other as JSON (`dumb=true`)."""
    varying = [k for k in values if grid is None or len(grid.get(k, ())) > 1] or list(values)
    last = [k.split(".")[-1] for k in varying]
    return ", ".join(
        f"{short if last.count(short) == 1 else k}={_shown(values[k])}"
        for k, short in zip(varying, last, strict=True)
    )


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def run_sweep(
    path: Path,
    log_dir: Path,
    run: Callable[[dict[str, Any], str], Path],
    out: Callable[[str], None] = print,
) -> tuple[Path, bool]:
    """Run every cell (`run(raw, name)` runs one experiment and returns its folder), record each
    cell's outcome in <sweep folder>/sweep.json as it ends, and write the comparison of the
    finished ones. Returns the sweep folder and whether every cell finished. A KeyboardInterrupt
    stops the sweep: the finished cells are recorded and compared, and it is raised again."""
    config, grid, repeat = read_sweep(path)
    base = read_raw(config)
    folder = log_dir / f"sweep-{path.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    folder.mkdir(parents=True, exist_ok=False)
    grid_cells = cells(grid)
    record = SweepRecord(str(path), str(config), grid, repeat)
    results = record.cells

    def save() -> None:
        write_json_atomic(folder / "sweep.json", record.to_json())

    total = len(grid_cells) * repeat
    interrupted = False
    try:
        for i, values in enumerate(grid_cells):
            for k in range(repeat):
                n = i * repeat + k + 1
                name = label(values, grid)
                out(f"== cell {n}/{total}: {name}" + (f" (run {k + 1})" if repeat > 1 else ""))
                result = CellRun(i, k, values)
                results.append(result)
                try:
                    raw = apply(base, values)
                    # refused here, with its reason, before any process starts (a library too)
                    require(parse_config(raw).he_params())
                    result.run = str(run(raw, f"{config} [{name}]"))
                    result.status = "finished"
                except HeflError as exc:
                    result.status, result.error = "failed", str(exc)
                    out(f"cell {n} failed: {exc}")
                except OSError as exc:
                    result.status, result.error = "failed", str(exc)
                    out(f"cell {n} failed: {exc}")
                finally:
                    if result.status is None:
                        result.status = "interrupted"
                    save()
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        compare_finished(folder, results, grid, out)
        done = sum(r.status == "finished" for r in results)
        compared = ", compare.txt, compare.json, compare-*.png" if done else ""
        out(
            f"sweep {'interrupted' if interrupted else 'done'}: {done} of {total} runs finished; "
            f"{folder}/sweep.json{compared}"
        )
    return folder, done == total


def compare_finished(
    folder: Path,
    results: Sequence[CellRun],
    grid: Mapping[str, Sequence[Any]],
    out: Callable[[str], None],
) -> None:
    """The comparison table and figures of the finished cells (repeats of a cell grouped, each
    named by the grid keys that vary), into the folder."""
    from hefl.results.compare import write_comparison

    groups: dict[int, tuple[str, list[Path]]] = {}
    for r in results:
        if r.status == "finished" and r.run is not None:
            groups.setdefault(r.cell, (label(r.values, grid), []))[1].append(Path(r.run))
    if not groups:
        return
    try:
        lines, _, _ = write_comparison(list(groups.values()), folder)
    except (HeflError, OSError, ValueError, KeyError) as exc:
        out(f"warning: no comparison written: {exc}")
        return
    for line in lines:
        out(line)
