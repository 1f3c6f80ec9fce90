"""Warm mode's NATS connection options come from the one settings object."""

from __future__ import annotations

from pydantic import SecretStr

from editflow.core.settings import NatsSettings
from editflow.events.worker_contract import (
    WorkerRequest,
    result_subject,
    work_msg_id,
    work_subject,
)
from editflow.inference.serve import nats_options


def test_credentials_are_passed_when_configured() -> None:
    options = nats_options(
        NatsSettings(
            url="nats://n:4222", user="w", password=SecretStr("p"), creds_file="/run/nats.creds"
        )
    )
    assert options["servers"] == ["nats://n:4222"]
    assert (options["user"], options["password"]) == ("w", "p")
    assert options["user_credentials"] == "/run/nats.creds"
    assert "tls" not in options and "token" not in options


def test_subjects_and_dedupe_ids() -> None:
    request = WorkerRequest.model_validate(
        {"edit_id": "e-1", "attempt": 2, "source": {"s3_key": "k"}, "prompt": "p"}
    )
    assert work_subject("longcat-image-edit") == "editflow.work.longcat-image-edit"
    assert result_subject("e-1") == "editflow.worker.results.e-1"
    assert work_msg_id(request) == "e-1/attempt-2"
