"""``editflow gateway run``: the HTTP API for OA systems and the try-it page."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="The HTTP gateway (POST /edit, /v1/edits, the try-it page).", no_args_is_help=True
)


@app.command()
def run(
    host: str | None = typer.Option(None, help="listen address (default EDITFLOW_GATEWAY__HOST)"),
    port: int | None = typer.Option(None, help="listen port (default EDITFLOW_GATEWAY__PORT)"),
) -> None:
    """Serve the gateway (settings from EDITFLOW_* environment variables)."""
    import uvicorn

    from editflow.core.logging import configure_logging
    from editflow.core.settings import get_settings
    from editflow.gateway.app import create_app

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    uvicorn.run(
        create_app(settings),
        host=host or settings.gateway.host,
        port=settings.gateway.port if port is None else port,
        # The gateway decides itself whose X-Forwarded-For to believe
        # (EDITFLOW_GATEWAY__TRUSTED_PROXIES); uvicorn must not rewrite the peer first.
        proxy_headers=False,
        server_header=False,
        log_config=None,
        timeout_graceful_shutdown=10,
    )
