"""In-memory stand-ins for the event bus and S3, for tests that need no platform.

``MemoryBus`` behaves like JetStream where the gateway can tell: a publish
with an id already stored is a duplicate (stored once), completions are
found by approval id, and ``wait`` returns as soon as one is recorded.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from editflow.core.errors import UpstreamError
from editflow.events.models import ApprovalEvent, CompletionData, CompletionEvent, ErrorDetail
from editflow.gateway.service import Rejection


class MemoryBus:
    def __init__(self) -> None:
        self.events: dict[str, ApprovalEvent] = {}
        self.publishes = 0
        self.completions: dict[str, CompletionEvent] = {}
        self.rejections: dict[str, Rejection] = {}
        self.selections: dict[str, int] = {}
        self.progresses: dict[str, Any] = {}
        self.available = True
        self._changed = asyncio.Event()

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def _ready(self) -> None:
        if not self.available:
            raise UpstreamError("the event bus is unavailable (test); retry shortly")

    async def publish(self, event: ApprovalEvent) -> None:
        self._ready()
        self.publishes += 1
        self.events.setdefault(event.id, event)

    async def completion(self, edit_id: str) -> CompletionEvent | None:
        self._ready()
        return self.completions.get(edit_id)

    async def wait(self, edit_id: str, timeout: float) -> CompletionEvent | None:
        self._ready()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while edit_id not in self.completions and loop.time() < deadline:
            await asyncio.sleep(0.01)
        return self.completions.get(edit_id)

    async def rejection(self, edit_id: str) -> Rejection | None:
        self._ready()
        return self.rejections.get(edit_id)

    async def select(
        self, *, form_id: str, approval_id: str, edit_id: str, variant: int, by: str | None
    ) -> None:
        self._ready()
        self.selections[edit_id] = variant

    async def selection(self, edit_id: str) -> None:
        self._ready()
        return None

    async def progress(self, edit_id: str):
        self._ready()
        return self.progresses.get(edit_id)

    async def check(self) -> str:
        self._ready()
        return "ok"

    def reject(self, edit_id: str, reason: str = "invalid_event.bad_signature") -> None:
        """As if the operator dead-lettered the approval event."""
        self.rejections[edit_id] = Rejection(
            reason, "signature does not match", "2026-01-01T00:00:00Z"
        )

    def complete(self, edit_id: str, status: str = "success", **data: Any) -> CompletionEvent:
        approval = self.events[edit_id]
        fields: dict[str, Any] = {
            "approval_event_id": edit_id,
            "form_id": approval.data.form_id,
            "approval_id": approval.data.approval_id,
            "status": status,
            "attempts": 1,
        }
        if status == "success":
            fields |= {
                "result_key": f"results/{edit_id}.png",
                "result_url": f"http://s3.invalid/editflow/results/{edit_id}.png?old",
                "result_url_expires_at": datetime.now(UTC) - timedelta(hours=1),
                "cost_seconds": 12.5,
            }
        elif status in ("failed", "needs_review"):
            fields["error"] = ErrorDetail(
                code="image_rejected", message="not an image: text/plain", retriable=False
            )
        fields |= data
        event = CompletionEvent(source="/test", data=CompletionData(**fields))
        self.completions[edit_id] = event
        return event


class MemoryStore:
    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, str]] = {}
        self.records: dict[str, dict[str, Any]] = {}
        self.available = True
        self.signed = 0

    async def check(self) -> str:
        if not self.available:
            raise UpstreamError("S3 unreachable (test)")
        return "ok"

    async def get_record(self, edit_id: str) -> dict[str, Any] | None:
        return self.records.get(edit_id)

    async def put_record(self, edit_id: str, record: dict[str, Any]) -> None:
        self.records[edit_id] = record

    async def put_upload(self, key: str, data: bytes, content_type: str) -> None:
        self.objects[key] = (data, content_type)

    def presign(self, key: str) -> tuple[str, datetime]:
        self.signed += 1
        return (
            f"http://s3.test/editflow/{key}?X-Amz-Signature={self.signed}",
            datetime.now(UTC) + timedelta(days=7),
        )
