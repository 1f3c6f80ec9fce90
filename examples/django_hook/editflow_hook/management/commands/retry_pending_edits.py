"""``python manage.py retry_pending_edits``: check forms whose edit outlived the wait (cron)."""

from __future__ import annotations

import asyncio

from django.core.management.base import BaseCommand

from editflow_hook.django_app import run_hook


class Command(BaseCommand):
    help = "Check again every approved form whose edit has not completed yet."

    def handle(self, *args: object, **options: object) -> None:
        asyncio.run(run_hook(retry_pending=True))
