"""``editflow review export`` against a real JetStream: the desk's lessons out of the audit."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from editflow.events.audit import publish_audit
from tests.events.test_audit import _cli, record


async def test_poor_verdicts_and_corrected_instructions_are_exported(
    js, topology, settings, tmp_path: Path
) -> None:
    review = {"kind": "review", "reviewer": "u-lei", "reviewer_name": "李雷"}
    when = datetime.now(UTC)
    for n, fields in enumerate(
        [
            {},  # an outcome: not a lesson
            {**review, "review_action": "verdict", "review_verdict": "poor"},
            {**review, "review_action": "verdict", "review_verdict": "good"},
            {
                **review,
                "review_action": "verdict",
                "review_verdict": "good",
                "better_instruction": "把天空换成晚霞",
            },
            {**review, "review_action": "rerun", "review_instruction": "把背景换成雪山"},
            {**review, "review_action": "upload", "review_result_key": "results/edits/x/r.png"},
        ]
    ):
        await publish_audit(js, topology, record(n, finished_at=when, **fields))
    out = tmp_path / "lessons.jsonl"
    result = await _cli(settings, "review", "export", "--since", "30d", "--output", str(out))
    assert result.exit_code == 0, result.output
    lessons = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [(x["editjob"], x["kind"]) for x in lessons] == [
        ("ej-1", "verdict"),
        ("ej-3", "verdict"),
        ("ej-4", "corrected_instruction"),
    ]
    assert lessons[0]["verdict"] == "poor" and lessons[0]["instruction"] == "把背景换成海边"
    assert lessons[1]["better_instruction"] == "把天空换成晚霞"
    assert lessons[2]["better_instruction"] == "把背景换成雪山"
    assert lessons[2]["reviewer_name"] == "李雷"
    refused = await _cli(settings, "review", "export", "--since", "a while")
    assert refused.exit_code != 0 and "--since" in refused.output
