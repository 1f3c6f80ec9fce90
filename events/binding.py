"""The CloudEvents NATS protocol binding: structured and binary content modes.

Structured mode (the default we publish): the whole event is the JSON
payload and the ``content-type`` header is ``application/cloudevents+json;
charset=utf-8``.

Binary mode: ``data`` is the payload (``content-type: application/json``)
and every other attribute is a ``ce-<name>`` header. Header values are
percent-encoded exactly like the CloudEvents HTTP binding (what the
``cloudevents`` SDK produces), so non-ASCII attribute values survive NATS
headers and SDK-built header maps can be published unchanged.

A message is read as binary when it has a ``ce-specversion`` header, as
structured otherwise. Both directions set ``Nats-Msg-Id`` to the event id,
which is what JetStream deduplicates on.

This module only moves bytes; deciding whether an event is acceptable is
:mod:`editflow.events.validation`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote, unquote

from editflow.events.models import CloudEvent
from editflow.events.problems import EventRejected, Problem, Reason
from editflow.events.signing import SIGNATURE_ATTRIBUTE, sign

ContentMode = Literal["structured", "binary"]

STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
JSON_CONTENT_TYPE = "application/json"
CE_PREFIX = "ce-"
CONTENT_TYPE = "content-type"
MSG_ID = "Nats-Msg-Id"

# CloudEvents HTTP binding 3.1.3.2: printable ASCII except space, '"' and '%' pass as is.
_SAFE = "".join(c for c in map(chr, range(0x21, 0x7F)) if c not in ' "%')


@dataclass(frozen=True)
class WireMessage:
    """What goes on the bus: NATS headers and payload."""

    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class RawEvent:
    """An event read off the wire but not yet validated: attribute strings and JSON data."""

    attributes: dict[str, Any]
    data: Any
    mode: ContentMode


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def encode(
    event: CloudEvent,
    *,
    mode: ContentMode = "structured",
    signing_key: str | bytes | None = None,
) -> WireMessage:
    """Serialise ``event`` for NATS, signing it first when a key is given."""
    attributes = event.attributes()
    data = event.data_json()
    if signing_key:
        attributes[SIGNATURE_ATTRIBUTE] = sign(signing_key, attributes, data)
    if mode == "structured":
        return WireMessage(
            headers={CONTENT_TYPE: f"{STRUCTURED_CONTENT_TYPE}; charset=utf-8", MSG_ID: event.id},
            body=_dumps({**attributes, "data": data}),
        )
    headers = {
        f"{CE_PREFIX}{name}": quote(str(value), safe=_SAFE)
        for name, value in attributes.items()
        if name != "datacontenttype"
    }
    headers[CONTENT_TYPE] = JSON_CONTENT_TYPE
    headers[MSG_ID] = event.id
    return WireMessage(headers=headers, body=_dumps(data))


def _media_type(content_type: str) -> tuple[str, dict[str, str]]:
    media, _, rest = content_type.partition(";")
    params: dict[str, str] = {}
    for part in rest.split(";"):
        key, sep, value = part.partition("=")
        if sep:
            params[key.strip().lower()] = value.strip().strip('"')
    return media.strip().lower(), params


def _reject(reason: Reason, path: str, message: str) -> EventRejected:
    return EventRejected([Problem(reason, path, message)])


def decode(body: bytes, headers: Mapping[str, str] | None) -> RawEvent:
    """Read a NATS message as a CloudEvent in either content mode.

    Raises :class:`EventRejected` for what cannot be read at all: a charset
    other than UTF-8, bytes that are not UTF-8, JSON that does not parse, a
    structured event that is not a JSON object, an unsupported content type.
    """
    lowered = {key.lower(): value for key, value in (headers or {}).items()}
    content_type = lowered.get(CONTENT_TYPE, "")
    media, params = _media_type(content_type) if content_type else ("", {})
    charset = params.get("charset")
    if charset is not None and charset.lower().replace("_", "-") not in ("utf-8", "utf8"):
        raise _reject(
            Reason.WRONG_CHARSET, "content-type", f"charset {charset!r}: only UTF-8 is accepted"
        )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _reject(
            Reason.WRONG_CHARSET,
            "",
            f"payload is not valid UTF-8 (byte {exc.start}); events must be UTF-8 encoded",
        ) from None
    text = text.removeprefix("\ufeff")  # RFC 8259 lets a parser ignore a UTF-8 BOM

    binary = f"{CE_PREFIX}specversion" in lowered
    if binary:
        if media and media != JSON_CONTENT_TYPE and not media.endswith("+json"):
            raise _reject(
                Reason.UNSUPPORTED_CONTENT_TYPE,
                "content-type",
                f"{media!r}: binary-mode data must be {JSON_CONTENT_TYPE}",
            )
        attributes: dict[str, Any] = {
            key[len(CE_PREFIX) :]: unquote(value)
            for key, value in lowered.items()
            if key.startswith(CE_PREFIX)
        }
        if media:
            attributes["datacontenttype"] = content_type.split(";")[0].strip()
        data = _loads(text, "data") if text.strip() else None
        return RawEvent(attributes=attributes, data=data, mode="binary")

    if media and media not in (STRUCTURED_CONTENT_TYPE, JSON_CONTENT_TYPE):
        raise _reject(
            Reason.UNSUPPORTED_CONTENT_TYPE,
            "content-type",
            f"{media!r}: expected {STRUCTURED_CONTENT_TYPE} (structured mode) or ce-* headers "
            "(binary mode)",
        )
    document = _loads(text, "")
    if not isinstance(document, dict):
        raise _reject(
            Reason.MALFORMED, "", f"a structured event is a JSON object, not {_json_kind(document)}"
        )
    data = document.pop("data", None)
    if "data_base64" in document:
        raise _reject(
            Reason.MALFORMED, "data_base64", "binary data is not accepted; send JSON data"
        )
    return RawEvent(attributes=document, data=data, mode="structured")


def _loads(text: str, path: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _reject(
            Reason.MALFORMED,
            path,
            f"not valid JSON: {exc.msg} at line {exc.lineno} col {exc.colno}",
        ) from None
    except RecursionError:
        raise _reject(Reason.MALFORMED, path, "JSON nested too deeply") from None


def _json_kind(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )
