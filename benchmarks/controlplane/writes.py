"""The operator's apiserver writes, by kind, per successful edit (issue 21 item 5's baseline).

Counted by the project's request-counting proxy (``editflow.devstack.countingproxy``)
the operator is pointed at: every request it makes, so every write it makes. Reads and
watches are left out; Events are included (they tell the story in ``kubectl describe``),
as are the per-attempt Secrets and the warm workers' own Jobs (under "other").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from editflow.devstack.countingproxy import Request, parse_path

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
KINDS = (
    "EditJob status PATCH",
    "Events",
    "EditOutcome create/delete",
    "EditJob create",
    "Secrets",
    "other",
)


def kind_of(request: Request) -> str:
    """Which row of the table a write counts in."""
    _, plural, name, sub = parse_path(request.path.split("?", 1)[0])
    if plural == "editjobs" and sub == "status" and request.method in ("PATCH", "PUT"):
        return "EditJob status PATCH"
    if plural == "editjobs" and request.method == "POST" and name is None:
        return "EditJob create"
    if plural == "events":
        return "Events"
    if plural == "editoutcomes" and request.method in ("POST", "DELETE"):
        return "EditOutcome create/delete"
    if plural == "secrets":
        return "Secrets"
    return "other"


def writes_by_kind(requests: Iterable[Request]) -> Counter[str]:
    """How many writes of each kind (non-writes ignored); "other" also lists its shapes."""
    counts: Counter[str] = Counter({kind: 0 for kind in KINDS})
    for request in requests:
        if request.method in WRITE_METHODS and not request.watch:
            counts[kind_of(request)] += 1
    return counts


def other_shapes(requests: Iterable[Request]) -> Counter[str]:
    """The method and collection of each write counted as "other" (what to look at next)."""
    found: Counter[str] = Counter()
    for request in requests:
        if request.method in WRITE_METHODS and kind_of(request) == "other":
            _, plural, _, sub = parse_path(request.path.split("?", 1)[0])
            found[f"{request.method} {plural}{'/' + sub if sub else ''}"] += 1
    return found


def per_edit(requests: list[Request], successes: int) -> dict[str, object]:
    """The table: writes of each kind divided by the successful edits of the same window."""
    counts = writes_by_kind(requests)
    total = sum(counts.values())
    scale = 1 / successes if successes else 0.0
    return {
        "successful_edits": successes,
        "writes": dict(counts),
        "per_edit": {kind: round(counts[kind] * scale, 2) for kind in KINDS},
        "all_per_edit": round(total * scale, 2),
        "other_shapes": dict(other_shapes(requests)),
    }
