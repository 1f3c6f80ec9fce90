"""The desk's chart values (issue 22): the gateway env they render, the alert and the dashboard."""

from __future__ import annotations

import json

from tests.chart.chartkit import CHART, EDGE_VALUES, find
from tests.chart.test_render import container_env, settings_of

DESK = {
    "trustedProxyCidrs": ["10.42.0.0/16"],
    "reviewers": {"lei@example.com": ["design"]},
    "claimSeconds": 600,
    "waitingBadgeSeconds": 7200,
}


def test_desk_values_become_gateway_settings(render, monkeypatch) -> None:
    values = {**EDGE_VALUES["everything-on"]}
    values["gateway"] = {**values.get("gateway", {}), "desk": DESK}
    objs = render(values)
    env = container_env(objs, "editflow-gateway")
    assert env["EDITFLOW_GATEWAY__DESK_REVIEWERS_FILE"] == "/etc/editflow/reviewers"
    gateway = settings_of(objs, monkeypatch, "editflow-gateway").gateway
    assert gateway.desk_trusted_header == "X-Forwarded-Email"
    assert gateway.desk_trusted_proxy_cidrs == ["10.42.0.0/16"]
    assert gateway.desk_reviewers == {"lei@example.com": ["design"]}
    assert (gateway.desk_claim_seconds, gateway.desk_waiting_seconds) == (600, 7200)
    pod = find(objs, "Deployment", "editflow-gateway", "editflow")["spec"]["template"]["spec"]
    [volume] = [v for v in pod["volumes"] if v["name"] == "reviewers"]
    assert volume["secret"] == {**volume["secret"], "secretName": "editflow-reviewers"}
    assert volume["secret"]["optional"] is True


def test_the_alert_fires_on_needs_review_waiting_and_the_dashboard_has_a_review_row(
    render,
) -> None:
    values = {**EDGE_VALUES["everything-on"]}
    values["prometheusRule"] = {"enabled": True, "needsReviewWaitingSeconds": 3600}
    rule = find(render(values), "PrometheusRule", "editflow", "editflow")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    expr = alerts["EditflowNeedsReviewWaiting"]["expr"]
    assert 'editflow_desk_oldest_ticket_timestamp_seconds{namespace="editflow"' in expr
    assert expr.rstrip().endswith("> 3600")
    dashboard = json.loads((CHART / "files/dashboards/editflow.json").read_text())
    titles = [p["title"] for p in dashboard["panels"]]
    assert "Review (the designer's desk)" in titles
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []))
    for metric in (
        "editflow_desk_queue_depth",
        "editflow_desk_time_to_first_claim_seconds_bucket",
        "editflow_desk_time_to_resolve_seconds_bucket",
        "editflow_desk_sample_verdicts_total",
    ):
        assert metric in exprs
