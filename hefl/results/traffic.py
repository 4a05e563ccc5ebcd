"""A round's bytes and phase seconds, from every node's record of it: by kind of link, by role."""

from __future__ import annotations

from collections.abc import Mapping

from hefl.records import ROLES, RoleBytes, RoundRecord
from hefl.results.timeline import CATEGORY, PHASES, rounded


def by_role(recs: Mapping[str, RoundRecord], role: Mapping[str, str]) -> dict[str, RoleBytes]:
    """A round's bytes by direction, summed over each role's nodes."""
    return {
        name: RoleBytes.of([rec for n, rec in recs.items() if role[n] == name]) for name in ROLES
    }


def by_link(recs: Mapping[str, RoundRecord], role: Mapping[str, str]) -> dict[str, int]:
    """A round's bytes by kind of link (`up:client->switch`, ...; `metrics`: the clients'
    reports), as their senders counted them."""
    links: dict[str, int] = {}
    for n, rec in recs.items():
        for peer, counts in rec.links.items():
            if peer not in role:
                continue  # strangers' messages: counted by the node, not a link of the topology
            for d in ("up", "down"):
                sent = counts.sent_in(d)
                if sent:
                    key = f"{d}:{role[n]}->{role[peer]}"
                    links[key] = links.get(key, 0) + sent
    links["metrics"] = sum(rec.sent("control") for n, rec in recs.items() if role[n] == "client")
    return dict(sorted(links.items()))


def phases_by_role(
    recs: Mapping[str, RoundRecord], role: Mapping[str, str]
) -> dict[str, dict[str, float]]:
    """Per role, the phases its nodes have, as a mean over them."""
    out = {}
    for name in ROLES:
        mine = [rec for n, rec in recs.items() if role[n] == name]
        if mine:
            out[name] = {
                p: rounded(sum(rec.phases.get(p, 0.0) for rec in mine) / len(mine)) or 0.0
                for p in PHASES
                if any(p in rec.phases for rec in mine)
            }
    return out


def crypto_seconds(recs: Mapping[str, RoundRecord]) -> float:
    """The seconds every node spent in the crypto phases of a round, together."""
    crypto = [p for p, c in CATEGORY.items() if c == "crypto"]
    return rounded(sum(rec.phases.get(p, 0.0) for rec in recs.values() for p in crypto)) or 0.0
