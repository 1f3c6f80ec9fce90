"""The console tables and the goals, from the JSON-ready results of a run."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

#: Brief §9 and issue 11, checked at the goal rate with the goal background.
GOALS = {
    "event_to_editjob_p99": 0.250,
    "event_to_job_p99": 0.500,
    "job_finished_to_completion_p99": 0.250,
    "rss_mb": 300.0,
}


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}"


def _triple(summary: dict[str, Any]) -> str:
    return f"{ms(summary['p50'])} / {ms(summary['p99'])} / {ms(summary['max'])}"


#: The columns every table of steps shares, then what each adds.
STAGE_COLUMNS = (
    "EditJobs", "rate/s", "sent/s", "event→EditJob", "event→Job",
    "Job done→completion", "lost EJ/Job/compl", "ok",
)  # fmt: skip


def _stage_cells(step: dict[str, Any]) -> list[str]:
    lost = step["lost"]
    return [
        f"{step['present_at_start']:,}",
        f"{step['rate']:g}",
        f"{step['publish']['achieved_rate']:.1f}",
        _triple(step["event_to_editjob"]),
        _triple(step["event_to_job"]),
        _triple(step["job_finished_to_completion"]),
        f"{lost['editjob']}/{lost['job']}/{lost['completion']}",
        "yes" if step["sustained"] else "[red]no[/red]",
    ]


def _steps(title: str, levels: list[dict[str, Any]], extra: dict[str, Any]) -> Table:
    """One row per step: the shared stage columns, then ``extra`` (column -> cell maker)."""
    table = Table(title=title)
    for col in (*STAGE_COLUMNS, *extra):
        table.add_column(col, justify="right")
    for level in levels:
        for step in level["steps"]:
            table.add_row(*_stage_cells(step), *(cell(step) for cell in extra.values()))
    return table


def _busy(step: dict[str, Any]) -> str:
    return f"{step['cpu_seconds_by_process']['machine_busy_cores']:.2f}"


def steps_table(levels: list[dict[str, Any]]) -> Table:
    return _steps(
        "editflow control plane (latencies in ms: p50 / p99 / max)",
        levels,
        {
            "CPU ms/event": lambda st: f"{st['operator']['cpu_ms_per_event']:.1f}",
            "RSS MB": lambda st: f"{st['operator']['rss_peak_mb']:.0f}",
            "busy cores": _busy,
        },
    )


def floor_table(levels: list[dict[str, Any]]) -> Table:
    """``--platform-floor``: the same stages with no operator, and what the platform burnt."""
    return _steps(
        "platform floor, no operator (latencies in ms: p50 / p99 / max)",
        levels,
        {
            "platform CPU ms/event": lambda st: f"{st['platform_cpu_ms_per_event']:.1f}",
            "busy cores": _busy,
        },
    )


def levels_table(levels: list[dict[str, Any]]) -> Table:
    table = Table(title="per background level")
    for col in (
        "finished EditJobs", "created in s", "operator settled in s", "start-up CPU s",
        "highest sustained rate/s", "RSS peak MB", "load avg (1 min)",
    ):  # fmt: skip
        table.add_column(col, justify="right")
    for level in levels:
        start = level["operator_startup"]
        table.add_row(
            f"{level['background']:,}",
            f"{level['background_seconds']:.0f}",
            f"{start['seconds']:.0f}" + ("" if start["settled"] else " (never idle)"),
            f"{start['cpu_seconds']:.1f}",
            f"{level['highest_sustained_rate'] or '-'}",
            f"{level['rss_peak_mb']:.0f}",
            f"{level['loadavg_start']:.1f} → {level['loadavg_end']:.1f}",
        )
    return table


def rss_table(levels: list[dict[str, Any]]) -> Table:
    """``--rss-only``: the operator at rest per count of finished EditJobs."""
    table = Table(title="operator memory at rest (MB, /proc/<pid>/status)")
    for col in (
        "finished EditJobs", "cached", "synced in s", "start-up CPU s", "VmRSS",
        "anon", "file", "VmHWM", "goal",
    ):  # fmt: skip
        table.add_column(col, justify="right")
    for level in levels:
        ok = level["rss_mb"] <= GOALS["rss_mb"]
        table.add_row(
            f"{level['editjobs']:,}",
            f"{(level.get('caches') or {}).get('editjobs', '?'):,}",
            f"{level['synced_after_seconds']:.1f}",
            f"{level['startup_cpu_seconds']:.1f}",
            f"{level['rss_mb']:.0f}",
            f"{level['rss_anon_mb'] or 0:.0f}",
            f"{level['rss_file_mb'] or 0:.0f}",
            f"{level['hwm_mb'] or 0:.0f}",
            f"≤ {GOALS['rss_mb']:.0f}: " + ("yes" if ok else "[red]no[/red]"),
        )
    return table


def peer_table(peer: list[dict[str, Any]]) -> Table:
    table = Table(title="event → Job created, editflow beside KEDA on the same events (ms)")
    for col in ("system", "rate/s", "events", "Jobs", "p50", "p99", "max"):
        table.add_column(col, justify="right")
    for trial in peer:
        for row in trial["rows"]:
            s = row["event_to_job"]
            table.add_row(
                row["system"], f"{trial['rate']:g}", str(trial["events"]), str(row["jobs"]),
                ms(s["p50"]), ms(s["p99"]), ms(s["max"]),
            )  # fmt: skip
    return table


def goals(levels: list[dict[str, Any]], goal_rate: float, goal_background: int) -> list[dict]:
    """Each goal with the measured value; judged at the goal rate and background when run."""
    if not levels:
        return []
    level = next((lv for lv in levels if lv["background"] == goal_background), None)
    where = f"{goal_background:,} EditJobs"
    if level is None:
        level = max(levels, key=lambda lv: lv["background"])
        where = f"{level['background']:,} EditJobs (the goal level {goal_background:,} not run)"
    step = next((s for s in level["steps"] if s["rate"] == goal_rate), None)
    rows: list[dict[str, Any]] = []

    def add(name: str, goal: str, value: float | None, ok: bool | None, unit: str) -> None:
        rows.append({"goal": name, "target": goal, "measured": value, "unit": unit, "met": ok,
                     "where": f"{goal_rate:g}/s, {where}"})  # fmt: skip

    if step is None:
        add("goal rate step", f"{goal_rate:g}/s", None, None, "")
        return rows
    for key, label, summary in (
        ("event_to_editjob_p99", "event → EditJob p99", step["event_to_editjob"]),
        ("event_to_job_p99", "event → first Job p99", step["event_to_job"]),
        ("job_finished_to_completion_p99", "Job finished → completion p99",
         step["job_finished_to_completion"]),
    ):  # fmt: skip
        p99 = summary["p99"]
        lost_any = sum(step["lost"].values()) > 0
        ok = p99 is not None and p99 <= GOALS[key] and not lost_any
        add(label, f"≤ {GOALS[key] * 1000:.0f} ms", p99, ok, "s")
    # An event that missed any stage has no completion: that count is the events lost.
    lost = max(step["lost"].values()) + step["publish"]["errors"]
    add("events lost", "0", lost, lost == 0, "events")
    add("operator RSS peak", f"≤ {GOALS['rss_mb']:.0f} MB", level["rss_peak_mb"],
        level["rss_peak_mb"] <= GOALS["rss_mb"], "MB")  # fmt: skip
    return rows


def goals_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="goals (brief §9)")
    for col in ("goal", "target", "measured", "met", "at"):
        table.add_column(col)
    for row in rows:
        value = row["measured"]
        shown = (
            "-" if value is None
            else f"{value * 1000:.0f} ms" if row["unit"] == "s"
            else f"{value:g} {row['unit']}"
        )  # fmt: skip
        met = {True: "[green]yes[/green]", False: "[red]no[/red]", None: "-"}[row["met"]]
        table.add_row(row["goal"], row["target"], shown, met, row["where"])
    return table


def print_all(console: Console, result: dict[str, Any]) -> None:
    console.print(steps_table(result["levels"]))
    console.print(levels_table(result["levels"]))
    if result.get("peer"):
        console.print(peer_table(result["peer"]))
    console.print(goals_table(result["goals"]))
