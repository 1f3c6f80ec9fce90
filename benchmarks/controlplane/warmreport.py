"""Tables and goals of the warm-mode run (``control_plane.py --mode warm``).

Each goal is read at the goal rate with the goal's count of finished EditJobs present;
where a figure misses its goal, the warm floor's figure from the same level is printed
beside it, so a miss the platform itself forces is told apart from the operator's.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from controlplane.writes import KINDS

STAGES = (
    ("event_to_editjob", "event → EditJob", 0.250),
    ("event_to_handed_out", "event → handed out", 0.500),
    ("result_to_completion", "result → completion", 0.250),
)


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{1000 * value:.0f}"


def _spread(summary: dict[str, Any]) -> str:
    """A stage's summary as "p50 / p99 / max" in ms."""
    return f"{_ms(summary['p50'])} / {_ms(summary['p99'])} / {_ms(summary['max'])}"


def steps_table(levels: list[dict[str, Any]]) -> Table:
    table = Table(title="warm mode: stages in ms (p50 / p99 / max)")
    for column in ("EditJobs", "phase", "rate", "events", "lost", "ok", "op CPU ms/ev"):
        table.add_column(column, justify="right")
    for _, title, _ in STAGES:
        table.add_column(title, justify="right")
    for level in levels:
        for phase in ("operator", "floor"):
            for step in (level.get(phase) or {}).get("steps", []):
                lost = ", ".join(f"{k} {v}" for k, v in step["lost"].items() if v) or "0"
                cells = [
                    f"{level['background']:,}", phase, f"{step['rate']:g}/s",
                    str(step["publish"]["events"]), lost, "yes" if step["sustained"] else "NO",
                    str(step.get("operator_cpu_ms_per_event", "—")),
                ]  # fmt: skip
                cells += [_spread(step[key]) for key, _, _ in STAGES]
                table.add_row(*cells)
    return table


def writes_table(levels: list[dict[str, Any]]) -> Table | None:
    """The operator's apiserver writes per successful edit, by kind, per counted step."""
    counted = [
        (f"{level['background']:,} EJ, {step['rate']:g}/s", step)
        for level in levels
        for step in (level.get("operator") or {}).get("steps", [])
        if "writes" in step
    ]
    counted += [
        (f"{level['background']:,} EJ, whole phase", level["operator"])
        for level in levels
        if "writes" in (level.get("operator") or {})
    ]
    if not counted:
        return None
    table = Table(title="operator apiserver writes per successful warm edit (counting proxy)")
    table.add_column("kind")
    for title, _ in counted:
        table.add_column(title, justify="right")
    for kind in KINDS:
        table.add_row(kind, *(f"{step['writes']['per_edit'][kind]:.2f}" for _, step in counted))
    table.add_row("all writes", *(f"{step['writes']['all_per_edit']:.2f}" for _, step in counted))
    successes = (str(step["writes"]["successful_edits"]) for _, step in counted)
    table.add_row("successful edits", *successes)
    return table


def cpu_table(levels: list[dict[str, Any]], rate: float) -> Table | None:
    """The machine's CPU per event at ``rate``, split by process, operator phase beside floor.

    Why: on two shared cores a stage's p99 follows the whole machine's load, not the
    operator's alone; this says how much of it the platform takes in each phase.
    """
    columns = [
        (f"{level['background']:,} EJ, {phase}", step["cpu"])
        for level in levels
        for phase in ("operator", "floor")
        if (step := _at(level, phase, rate)) is not None and "cpu" in step
    ]
    if not columns:
        return None
    table = Table(title=f"CPU per event at {rate:g}/s, ms (the whole machine, by process)")
    table.add_column("process")
    for title, _ in columns:
        table.add_column(title, justify="right")
    names: dict[str, float] = {}
    for _, cpu in columns:
        for name, ms in cpu["ms_per_event"].items():
            names[name] = max(names.get(name, 0.0), ms)
    for name in sorted(names, key=lambda n: -names[n]):
        table.add_row(name, *(str(cpu["ms_per_event"].get(name, "—")) for _, cpu in columns))
    table.add_row("machine", *(str(cpu["machine_ms_per_event"]) for _, cpu in columns))
    table.add_row("busy cores", *(f"{cpu['machine_busy_cores']:.2f}" for _, cpu in columns))
    return table


def keda_table(levels: list[dict[str, Any]]) -> Table | None:
    """editflow's operator beside the KEDA peer on the same platform: event → handed out."""
    level = next((lv for lv in levels if "keda" in lv), None)
    if level is None:
        return None
    peer, operator = level["keda"], level.get("operator") or {}
    table = Table(
        title=f"event → handed to a worker, ms (p50 / p99 / max), {level['background']:,} EditJobs"
    )
    for column in (
        "rate",
        "editflow (EditJob, admission, STS)",
        "lost",
        "KEDA ScaledObject",
        "lost",
    ):
        table.add_column(column, justify="right")
    if "error" in peer:
        table.add_row("—", "—", "—", f"not measured: {peer['error'][:80]}", "—")
        return table
    warm_first = (operator.get("warmup") or {}).get("from_zero_to_handed_out")
    cold = peer.get("from_zero") or {}
    table.add_row(
        f"from zero (KEDA polls every {peer['polling_interval_s']} s)",
        _ms(warm_first),
        "0" if warm_first is not None else "1",
        _ms(cold.get("event_to_handed_out", {}).get("max")),
        str(cold.get("lost", "—")),
    )
    for step in peer.get("steps", []):
        ours = _at(level, "operator", step["rate"])
        cells = [f"{step['rate']:g}/s"]
        for s, lost in (
            (
                ours["event_to_handed_out"] if ours else None,
                ours["lost"]["handed"] if ours else "—",
            ),
            (step["event_to_handed_out"], step["lost"]),
        ):
            cells.append("—" if s is None else _spread(s))
            cells.append(str(lost))
        table.add_row(*cells)
    return table


def _at(level: dict[str, Any], phase: str, rate: float) -> dict[str, Any] | None:
    steps = (level.get(phase) or {}).get("steps", [])
    return next((s for s in steps if s["rate"] == rate), None)


def goals(levels: list[dict[str, Any]], rate: float, background: int) -> list[dict[str, Any]]:
    """Each goal with its value, its verdict and, on a miss, the floor's value beside it."""
    level = next((lv for lv in levels if lv["background"] == background), None)
    if level is None and levels:  # a --quick run: read the goals where it ran, and say so
        level = max(levels, key=lambda lv: lv["background"])
        background = level["background"]
    step = _at(level, "operator", rate) if level else None
    floor = _at(level, "floor", rate) if level else None
    where = f"{rate:g}/s with {background:,} EditJobs"
    found: list[dict[str, Any]] = [
        {
            "goal": f"{where}: sustained, 0 lost",
            "target": "sustained",
            "value": None if step is None else step["sustained"],
            "ok": None if step is None else step["sustained"],
            "floor": None if floor is None else floor["sustained"],
        }
    ]
    for key, title, target in STAGES:
        value = step[key]["p99"] if step else None
        ok = None if value is None else value <= target
        found.append(
            {
                "goal": f"{where}: {title} p99",
                "target": f"≤ {1000 * target:.0f} ms",
                "value": value,
                "ok": ok,
                "floor": floor[key]["p99"] if floor else None,
            }
        )
    return found


def goals_table(found: list[dict[str, Any]]) -> Table:
    table = Table(title="warm-mode goals (floor beside a miss)")
    for column in ("goal", "target", "value", "ok", "floor, same run"):
        table.add_column(column)
    for goal in found:
        value, floor = goal["value"], goal["floor"]
        shown = _ms(value) + " ms" if isinstance(value, float) else str(value)
        beside = ""
        if goal["ok"] is False:
            beside = _ms(floor) + " ms" if isinstance(floor, float) else str(floor)
        verdict = {True: "yes", False: "NO", None: "not measured"}[goal["ok"]]
        table.add_row(goal["goal"], goal["target"], shown, verdict, beside)
    return table


def print_all(console: Console, result: dict[str, Any]) -> None:
    console.print(steps_table(result["levels"]))
    writes = writes_table(result["levels"])
    if writes is not None:
        console.print(writes)
    cpu = cpu_table(result["levels"], result["plan"]["goal_rate"])
    if cpu is not None:
        console.print(cpu)
    peer = keda_table(result["levels"])
    if peer is not None:
        console.print(peer)
    console.print(goals_table(result["goals"]))
