"""Fixtures for the event-bus tests: one real nats-server (JetStream, file store) per session.

The events tests need only NATS, so they start the project's own NATS
component (``LocalStack(kube=False, minio=False)``: same binary, flags and
``start_process`` restart as the full stack) instead of the whole platform:
a second to start instead of a control plane. Each test gets its own stream,
subject and consumer names, so tests never see each other's messages, and
short ack waits and backoffs so redelivery tests finish in seconds.

Polling is async (the ``eventually`` fixture): a blocking ``wait_until`` would stop
the event loop that the NATS client needs to make progress.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from editflow.core.settings import EventsSettings, NatsSettings, Settings
from editflow.devstack.components import Nats
from editflow.devstack.stack import LocalStack
from editflow.events.connection import connect
from editflow.events.models import APPROVAL_V1, ApprovalData, ApprovalEvent, Person
from editflow.events.topology import Topology, provision

SIGNING_KEY = "test-signing-key"


async def _eventually(
    check: Callable[[], Awaitable[Any] | Any], *, timeout: float = 20.0, what: str
) -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy; return that."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while True:
        try:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result
            last = result
        except Exception as exc:
            last = exc
        if loop.time() > deadline:
            raise AssertionError(
                f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})"
            )
        await asyncio.sleep(0.05)


@pytest.fixture(scope="session")
def eventually() -> Callable[..., Awaitable[Any]]:
    """``await eventually(check, what=...)``: poll until ``check()`` is truthy (async-friendly)."""
    return _eventually


@pytest.fixture(scope="session")
def nats_server() -> Iterator[Nats]:
    with LocalStack(kube=False, minio=False) as stack:
        assert stack.nats is not None
        yield stack.nats


def events_settings(**overrides: Any) -> EventsSettings:
    """Unique names and test-speed timings (ack wait 1 s, redelivery after 0.2 s)."""
    tag = uuid.uuid4().hex[:8]
    values: dict[str, Any] = {
        "approvals_stream": f"T{tag}_APPROVALS",
        "approval_subject": f"t{tag}.approvals.image-edit",
        "withdraw_subject": f"t{tag}.approvals.image-edit.withdraw",
        "completions_stream": f"T{tag}_COMPLETIONS",
        "completion_subject_prefix": f"t{tag}.completions",
        "review_subject_prefix": f"t{tag}.reviews",
        "dlq_stream": f"T{tag}_DLQ",
        "dlq_subject_prefix": f"t{tag}.dlq",
        "advisories_stream": f"T{tag}_ADVISORIES",
        "audit_stream": f"T{tag}_AUDIT",
        "audit_subject_prefix": f"t{tag}.audit",
        "audit_max_age_seconds": 3600,
        "consumer": f"op-{tag}",
        "ack_wait_seconds": 1.0,
        "backoff_seconds": [0.2, 0.2, 0.2],
        "max_deliver": 3,
        "duplicate_window_seconds": 600,
        "max_age_seconds": 3600,
        "dlq_max_age_seconds": 3600,
    }
    values.update(overrides)
    return EventsSettings(**values)


@pytest.fixture(scope="session")
def make_settings(nats_server: Nats) -> Callable[..., Settings]:
    """Settings for the session's NATS with fresh names; keywords override EventsSettings."""

    def make(**overrides: Any) -> Settings:
        return Settings(nats=NatsSettings(url=nats_server.url), events=events_settings(**overrides))

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def topology(settings: Settings) -> Topology:
    return Topology(settings.events)


@pytest.fixture
async def nc(settings: Settings) -> AsyncIterator[NATS]:
    client = await connect(settings.nats, name="editflow-test", reconnect_wait=0.2)
    yield client
    if not client.is_closed:
        await client.close()


@pytest.fixture
async def js(nc: NATS, topology: Topology) -> JetStreamContext:
    context = nc.jetstream()
    await provision(context, topology)
    return context


def _approval(**data: Any) -> ApprovalEvent:
    fields: dict[str, Any] = {
        "form_id": "F-1024",
        "approval_id": f"AP-{uuid.uuid4().hex[:6]}",
        "applicant": Person(id="u42", name="李雷"),
        "approvers": [Person(id="m1", name="韩梅梅"), Person(id="m2")],
        "image_url": "https://oa.example.com/files/poster.png",
        "instruction": "把背景换成海边日落",
        "usage": "wechat-article",
    }
    fields.update(data)
    return ApprovalEvent(source="https://oa.example.com", data=ApprovalData(**fields))


def _approval_document(**data: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": "https://oa.example.com",
        "type": APPROVAL_V1,
        "time": "2026-11-25T08:00:00Z",
        "datacontenttype": "application/json",
        "data": {
            "form_id": "F-1",
            "approval_id": "AP-1",
            "applicant": {"id": "u1"},
            "image_url": "https://oa.example.com/a.png",
            "instruction": "remove the watermark",
            **data,
        },
    }


@pytest.fixture
def make_approval() -> Callable[..., ApprovalEvent]:
    """A valid approval event (unique approval id); keyword arguments override data fields."""
    return _approval


@pytest.fixture
def approval_document() -> Callable[..., dict[str, Any]]:
    """A valid structured-mode approval as a plain dict, for corrupting."""
    return _approval_document
