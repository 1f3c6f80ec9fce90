"""Interoperability with the ``cloudevents`` SDK, in both content modes and over a real NATS.

An OA system written against the reference SDK must be able to publish
events we accept, and read the events we publish.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from cloudevents.core.bindings.http import (
    HTTPMessage,
    from_binary,
    from_structured,
    to_binary,
    to_structured,
)
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent as SdkEvent

from editflow.events.binding import encode
from editflow.events.models import APPROVAL_V1, ApprovalEvent
from editflow.events.signing import sign
from editflow.events.validation import Policy, parse_event


def _sdk_approval(**extra: Any) -> SdkEvent:
    return SdkEvent(
        attributes={
            "type": APPROVAL_V1,
            "source": "https://oa.example.com",
            "id": "oa-form-77-approval-3",
            "datacontenttype": "application/json",
            **extra,
        },
        data={
            "form_id": "F-77",
            "approval_id": "AP-3",
            "applicant": {"id": "u9", "name": "王芳"},
            "image_url": "s3://oa-uploads/forms/77/poster.jpg",
            "instruction": "在海报顶部加上文字“双十一大促”，红色，黑体",
            "usage": "display-board",
            "generation": {"steps": 30, "guidance_scale": 4.5, "seed": 42},
        },
    )


@pytest.mark.parametrize("mode", ["structured", "binary"])
def test_events_built_with_the_sdk_parse_as_ours(mode):
    sdk_event = _sdk_approval()
    converter = to_structured if mode == "structured" else to_binary
    message = converter(sdk_event, JSONFormat())
    event = parse_event(message.body, message.headers)
    assert isinstance(event, ApprovalEvent)
    assert event.id == "oa-form-77-approval-3"
    assert event.data.generation is not None and event.data.generation.seed == 42
    assert event.data.instruction.startswith("在海报顶部")


@pytest.mark.parametrize("mode", ["structured", "binary"])
def test_sdk_signed_events_verify(mode):
    when = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
    unsigned = _sdk_approval(time=when)
    headers = to_binary(unsigned, JSONFormat()).headers
    # Sign over exactly the attribute strings the SDK puts on the wire.
    wire_attrs = {k.removeprefix("ce-"): v for k, v in headers.items() if k.startswith("ce-")}
    signature = sign("k", wire_attrs, unsigned.get_data())
    signed = _sdk_approval(time=when, signature=signature)
    converter = to_structured if mode == "structured" else to_binary
    message = converter(signed, JSONFormat())
    parse_event(message.body, message.headers, policy=Policy(signing_key="k"))


@pytest.mark.parametrize("mode", ["structured", "binary"])
def test_the_sdk_parses_what_we_publish(make_approval, mode):
    ours = make_approval()
    wire = encode(ours, mode=mode, signing_key="k")
    message = HTTPMessage(headers=wire.headers, body=wire.body)
    parsed = (
        from_structured(message, JSONFormat())
        if mode == "structured"
        else from_binary(message, JSONFormat())
    )
    assert parsed.get_id() == ours.id
    assert parsed.get_type() == APPROVAL_V1
    assert parsed.get_source() == ours.source
    assert parsed.get_extension("signature").startswith("v1=")
    assert parsed.get_data()["instruction"] == ours.data.instruction


async def test_sdk_binary_headers_travel_over_nats_and_parse(js, topology):
    message = to_binary(_sdk_approval(id="sdk-over-nats"), JSONFormat())
    await js.publish(topology.approval_subject, message.body, headers=message.headers)
    sub = await js.pull_subscribe_bind(topology.consumer, stream=topology.approvals_stream)
    (msg,) = await sub.fetch(1, timeout=5)
    event = parse_event(msg.data, msg.headers, subject=msg.subject)
    assert event.id == "sdk-over-nats"
    await msg.ack()
