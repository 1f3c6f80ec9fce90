"""A corpus of malformed events: each is rejected with a clear reason and kept in the dead letter.

Every case is checked twice: :func:`parse_event` names the reason and the
field, and the same bytes published to a real JetStream end up in the DLQ
(byte for byte, with the reason) without ever reaching the handler.
"""

from __future__ import annotations

import asyncio
import copy
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest

from editflow.core.settings import Settings
from editflow.events.connection import connect
from editflow.events.consumer import run_consumer
from editflow.events.dlq import list_dead_letters
from editflow.events.models import APPROVAL_V1, COMPLETION_V1, OA_EVENT_TYPES
from editflow.events.problems import EventRejected, Reason
from editflow.events.signing import sign
from editflow.events.topology import Topology, provision
from editflow.events.validation import Policy, parse_event

KEY = "corpus-signing-key"
STRUCTURED = {"content-type": "application/cloudevents+json; charset=utf-8"}


def _document(**data: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": f"ev-{uuid.uuid4().hex[:12]}",
        "source": "https://oa.example.com",
        "type": APPROVAL_V1,
        "time": "2026-11-25T08:00:00Z",
        "datacontenttype": "application/json",
        "data": {
            "form_id": "F-1",
            "approval_id": "AP-1",
            "applicant": {"id": "u1", "name": "张三"},
            "image_url": "https://oa.example.com/a.png",
            "instruction": "去掉右下角的水印",
            **data,
        },
    }


def _signed(doc: dict[str, Any], key: str = KEY) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    attrs = {k: v for k, v in doc.items() if k not in ("data", "signature")}
    doc["signature"] = sign(key, attrs, doc.get("data"))
    return doc


def _body(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False).encode()


@dataclass(frozen=True)
class Case:
    name: str
    body: bytes
    reason: Reason
    mentions: str  # a field path or phrase the reason must name
    headers: dict[str, str] = field(default_factory=lambda: dict(STRUCTURED))
    on_withdraw_subject: bool = False


def _with(**changes: Any) -> dict[str, Any]:
    """A signed approval whose attributes are changed (None deletes)."""
    doc = _document()
    for key, value in changes.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    return _signed(doc)


def _data(**changes: Any) -> bytes:
    """A signed approval whose data fields are changed (None deletes)."""
    doc = _document()
    for key, value in changes.items():
        if value is None:
            doc["data"].pop(key, None)
        else:
            doc["data"][key] = value
    return _body(_signed(doc))


def _tampered() -> bytes:
    doc = _signed(_document())
    doc["data"]["instruction"] = "把整张图换成别的"
    return _body(doc)


def _binary_headers(**overrides: str) -> dict[str, str]:
    headers = {
        "ce-specversion": "1.0",
        "ce-id": f"ev-{uuid.uuid4().hex[:12]}",
        "ce-source": "https://oa.example.com",
        "ce-type": APPROVAL_V1,
        "content-type": "application/json",
    }
    headers.update(overrides)
    return {k: v for k, v in headers.items() if v}


CASES = [
    # -- not JSON / not an object ---------------------------------------------------------
    Case("bad_json", b"{not json", Reason.MALFORMED, "not valid JSON"),
    Case("truncated_json", _body(_signed(_document()))[:-20], Reason.MALFORMED, "not valid JSON"),
    Case("empty_body", b"", Reason.MALFORMED, "not valid JSON"),
    Case("json_array", b"[1, 2, 3]", Reason.MALFORMED, "not an array"),
    Case("json_string", b'"make it blue"', Reason.MALFORMED, "not a string"),
    Case("data_base64", _body(_with(data_base64="aGVsbG8=")), Reason.MALFORMED, "data_base64"),
    Case(
        "binary_data_not_json",
        b"instruction=make it blue",
        Reason.MALFORMED,
        "not valid JSON",
        headers=_binary_headers(),
    ),
    # -- charset and content type ---------------------------------------------------------
    Case(
        "latin1_bytes",
        json.dumps(
            _signed(_document(instruction="café crème", applicant={"id": "u1"})),
            ensure_ascii=False,
        ).encode("latin-1"),
        Reason.WRONG_CHARSET,
        "not valid UTF-8",
    ),
    Case(
        "utf16_bytes",
        _body(_signed(_document())).decode().encode("utf-16"),
        Reason.WRONG_CHARSET,
        "not valid UTF-8",
    ),
    Case(
        "gbk_bytes",
        json.dumps(_signed(_document()), ensure_ascii=False).encode("gbk"),
        Reason.WRONG_CHARSET,
        "not valid UTF-8",
    ),
    Case(
        "charset_header_iso_8859_1",
        _body(_signed(_document())),
        Reason.WRONG_CHARSET,
        "only UTF-8",
        headers={"content-type": "application/cloudevents+json; charset=iso-8859-1"},
    ),
    Case(
        "content_type_text_plain",
        _body(_signed(_document())),
        Reason.UNSUPPORTED_CONTENT_TYPE,
        "text/plain",
        headers={"content-type": "text/plain"},
    ),
    # -- size -------------------------------------------------------------------------------
    Case(
        "oversize_event",
        _data(template={"id": "t", "params": {"x": "y" * 70_000}}),
        Reason.TOO_LARGE,
        "limit is",
    ),
    # -- CloudEvents attributes -----------------------------------------------------------
    Case("specversion_0_3", _body(_with(specversion="0.3")), Reason.UNSUPPORTED_SPECVERSION, "0.3"),
    Case("specversion_2_0", _body(_with(specversion="2.0")), Reason.UNSUPPORTED_SPECVERSION, "2.0"),
    Case("specversion_missing", _body(_with(specversion=None)), Reason.INVALID, "specversion"),
    Case(
        "type_unknown_version",
        _body(_with(type="io.editflow.approval.v2")),
        Reason.UNKNOWN_TYPE,
        "approval.v2",
    ),
    Case(
        "type_foreign",
        _body(_with(type="com.example.order.created")),
        Reason.UNKNOWN_TYPE,
        "com.example.order.created",
    ),
    Case(
        "type_completion_on_approvals",
        _body(_with(type=COMPLETION_V1)),
        Reason.UNKNOWN_TYPE,
        "not accepted here",
    ),
    Case("type_missing", _body(_with(type=None)), Reason.INVALID, "type"),
    Case("id_missing", _body(_with(id=None)), Reason.INVALID, "id"),
    Case("id_not_a_string", _body(_with(id=42)), Reason.INVALID, "id"),
    Case("id_control_chars", _body(_with(id="ev\n1")), Reason.INVALID, "control characters"),
    Case("source_missing", _body(_with(source=None)), Reason.INVALID, "source"),
    Case("time_not_rfc3339", _body(_with(time="yesterday")), Reason.INVALID, "time"),
    Case("time_without_zone", _body(_with(time="2026-11-25T08:00:00")), Reason.INVALID, "timezone"),
    Case(
        "datacontenttype_xml",
        _body(_with(datacontenttype="application/xml")),
        Reason.INVALID,
        "data must be application/json",
    ),
    Case(
        "datacontenttype_latin1",
        _body(_with(datacontenttype="application/json; charset=latin1")),
        Reason.INVALID,
        "UTF-8",
    ),
    Case("extension_bad_name", _body(_with(**{"Trace-Id": "x"})), Reason.INVALID, "Trace-Id"),
    Case(
        "binary_type_header_missing",
        _body(_document()["data"]),
        Reason.INVALID,
        "type",
        headers=_binary_headers(**{"ce-type": ""}),
    ),
    # -- data -----------------------------------------------------------------------------
    Case("data_missing", _body(_with(data=None)), Reason.INVALID, "data"),
    Case("data_not_an_object", _body(_with(data="make it blue")), Reason.INVALID, "data"),
    Case("form_id_missing", _data(form_id=None), Reason.INVALID, "data.form_id"),
    Case("form_id_wrong_type", _data(form_id=1024), Reason.INVALID, "data.form_id"),
    Case("applicant_wrong_type", _data(applicant="u1"), Reason.INVALID, "data.applicant"),
    Case("approvers_not_a_list", _data(approvers={"id": "m1"}), Reason.INVALID, "data.approvers"),
    Case("image_missing", _data(image_url=None), Reason.INVALID, "image_url or image_key"),
    Case(
        "image_url_and_key",
        _data(image_key="inputs/a.png"),
        Reason.INVALID,
        "image_url or image_key",
    ),
    Case("url_scheme_file", _data(image_url="file:///etc/passwd"), Reason.INVALID, "'file'"),
    Case("url_scheme_ftp", _data(image_url="ftp://files.example.com/a.png"), Reason.INVALID, "ftp"),
    Case("url_scheme_gopher", _data(image_url="gopher://x/a.png"), Reason.INVALID, "gopher"),
    Case("url_no_scheme", _data(image_url="oa.example.com/a.png"), Reason.INVALID, "(none)"),
    Case("url_no_host", _data(image_url="https:///a.png"), Reason.INVALID, "host"),
    Case("s3_url_no_key", _data(image_url="s3://bucket"), Reason.INVALID, "object key"),
    Case("prompt_empty", _data(instruction=""), Reason.INVALID, "data.instruction"),
    Case("prompt_whitespace", _data(instruction=" \t "), Reason.INVALID, "data.instruction"),
    Case("prompt_huge", _data(instruction="加" * 5000), Reason.INVALID, "at most 2000"),
    Case("prompt_wrong_type", _data(instruction=["a", "b"]), Reason.INVALID, "data.instruction"),
    Case(
        "unknown_field_typo",
        _data(prompt="remove the logo"),
        Reason.INVALID,
        "data.prompt: unknown",
    ),
    Case("steps_out_of_range", _data(generation={"steps": 1000}), Reason.INVALID, "steps"),
    Case("seed_negative", _data(generation={"seed": -1}), Reason.INVALID, "seed"),
    Case(
        "guidance_not_a_number",
        _data(generation={"guidance_scale": "high"}),
        Reason.INVALID,
        "guidance",
    ),
    Case("priority_unknown", _data(priority="asap"), Reason.INVALID, "data.priority"),
    Case(
        "callback_plain_http",
        _data(callback={"webhook_url": "http://oa.example.com/hook"}),
        Reason.INVALID,
        "https",
    ),
    Case(
        "callback_wildcard_subject",
        _data(callback={"nats_subject": "oa.>"}),
        Reason.INVALID,
        "wildcards",
    ),
    # A callback subject is published to with the operator's credentials: never a way in.
    Case(
        "callback_jetstream_api_subject",
        _data(callback={"nats_subject": "$JS.API.STREAM.DELETE.EDITFLOW_APPROVALS"}),
        Reason.INVALID,
        "data.callback.nats_subject",
    ),
    Case(
        "callback_inbox_subject",
        _data(callback={"nats_subject": "_INBOX.Xy12"}),
        Reason.INVALID,
        "NATS system subject",
    ),
    Case(
        "callback_subject_outside_the_prefix",
        _data(callback={"nats_subject": "oa.edits.done"}),
        Reason.INVALID,
        "not under the callback prefix 'oa.callbacks.'",
    ),
    Case(
        "callback_subject_of_editflow_itself",
        _data(callback={"nats_subject": "editflow.work.longcat-image-edit"}),
        Reason.INVALID,
        "editflow's own subjects",
    ),
    Case("usage_not_a_slug", _data(usage="WeChat Article!"), Reason.INVALID, "data.usage"),
    # -- authenticity and routing ---------------------------------------------------------
    Case("unsigned", _body(_document()), Reason.UNSIGNED, "signature"),
    Case(
        "signed_with_another_key",
        _body(_signed(_document(), "wrong")),
        Reason.BAD_SIGNATURE,
        "signature",
    ),
    Case("tampered_after_signing", _tampered(), Reason.BAD_SIGNATURE, "changed after signing"),
    Case(
        "approval_on_withdraw_subject",
        _body(_signed(_document())),
        Reason.WRONG_SUBJECT,
        "accepted only on",
        on_withdraw_subject=True,
    ),
]

assert len(CASES) >= 30
assert len({c.name for c in CASES}) == len(CASES)


def _policy(settings: Settings) -> Policy:
    return Policy.from_settings(settings.events, accept=OA_EVENT_TYPES)


@pytest.fixture(scope="module")
def corpus_settings(make_settings) -> Settings:
    return make_settings(signing_key=KEY)


@pytest.fixture(scope="module")
async def dead_letters(corpus_settings: Settings, eventually) -> dict[str, Any]:
    """Publish the whole corpus once, run the real consumer, return the DLQ keyed by case name."""
    topology = Topology(corpus_settings.events)
    nc = await connect(corpus_settings.nats, name="corpus")
    js = nc.jetstream()
    await provision(js, topology)
    for case in CASES:
        subject = (
            topology.withdraw_subject if case.on_withdraw_subject else topology.approval_subject
        )
        ack = await js.publish(
            subject, case.body, headers={**case.headers, "Nats-Msg-Id": f"corpus-{case.name}"}
        )
        assert not ack.duplicate
    handled: list[Any] = []

    async def handler(event, delivery):
        handled.append(event)

    stop = asyncio.Event()
    task = asyncio.create_task(
        run_consumer(
            js,
            handler,
            topology=topology,
            policy=_policy(corpus_settings),
            stop=stop,
            fetch_timeout=0.3,
        )
    )

    async def all_dead_lettered() -> bool:
        return len(await list_dead_letters(js, topology, limit=1000)) >= len(CASES)

    await eventually(all_dead_lettered, what="every corpus event in the dead letter")
    letters = await list_dead_letters(js, topology, limit=1000)
    stop.set()
    await task
    await nc.close()
    return {
        "handled": handled,
        "by_case": {dl.event_id.removeprefix("corpus-"): dl for dl in letters if dl.event_id},
        "count": len(letters),
    }


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_rejected_with_a_clear_reason(case: Case, corpus_settings: Settings):
    subject = (
        corpus_settings.events.withdraw_subject
        if case.on_withdraw_subject
        else corpus_settings.events.approval_subject
    )
    with pytest.raises(EventRejected) as caught:
        parse_event(case.body, case.headers, subject=subject, policy=_policy(corpus_settings))
    assert caught.value.reason is case.reason, caught.value.message
    assert case.mentions in caught.value.message


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
async def test_kept_in_the_dead_letter(case: Case, dead_letters: dict[str, Any]):
    letter = dead_letters["by_case"][case.name]
    assert letter.reason == f"invalid_event.{case.reason.value}"
    assert case.mentions in letter.message
    assert letter.body == case.body, "the dead letter keeps the original bytes"
    assert letter.subject.endswith("withdraw") == case.on_withdraw_subject
    assert letter.deliveries == 1, "invalid events are dead-lettered at once, not retried"


async def test_no_malformed_event_reaches_the_handler_or_is_stored_twice(dead_letters):
    assert dead_letters["handled"] == []
    assert dead_letters["count"] == len(CASES)
