"""summary.csv: one row per round and one of totals, from summary.json's content."""

from __future__ import annotations

import csv
import io

from hefl.records import CSV_CRYPTO, CSV_FIRST, ROLES, SPLIT, RunSummary
from hefl.results.timeline import PHASES

CSV_SPLIT = tuple(f"critical_{k}_s" for k in SPLIT)
CSV_LAST = ("critical_client", "he_error_max", "he_error_mean")


def to_csv(summary: RunSummary) -> str:
    """summary.csv: one row per round and one of totals; bytes per link kind and phase seconds
    per role as columns."""
    rounds = summary.rounds
    link_keys = sorted({k for row in rounds for k in row.bytes_by_link})
    phase_cols = [
        (role, p)
        for role in ROLES
        for p in PHASES
        if any(p in row.phases_by_role.get(role, {}) for row in rounds)
    ]
    head = [
        *CSV_FIRST,
        *(f"bytes_{k.replace(':', '_').replace('->', '_to_')}" for k in link_keys),
        *(f"{role}_{p}_s" for role, p in phase_cols),
        CSV_CRYPTO,
        *CSV_SPLIT,
        *CSV_LAST,
    ]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(head)
    for row in rounds:
        path = row.critical_path
        split = path.split if path else {}
        he = row.he_error
        w.writerow(
            [
                *(getattr(row, k) for k in CSV_FIRST),
                *(row.bytes_by_link.get(k, 0) for k in link_keys),
                *(row.phases_by_role.get(role, {}).get(p, "") for role, p in phase_cols),
                row.crypto_s,
                *(split.get(k, "") for k in SPLIT),
                (path.client or "") if path else "",
                "" if he is None else he.max_abs,
                "" if he is None else he.mean_abs,
            ]
        )
    t = summary.totals
    if t.rounds:
        w.writerow(
            [
                "total",
                t.final_accuracy,
                t.final_loss,
                "",
                t.seconds,
                t.bytes_on_wire,
                t.aggregator_ingress,
                *(sum(row.bytes_by_link.get(k, 0) for row in rounds) for k in link_keys),
                *([""] * len(phase_cols)),
                t.crypto_s,
                *(t.critical_split[k] for k in SPLIT),
                *([""] * len(CSV_LAST)),
            ]
        )
    return buf.getvalue()
