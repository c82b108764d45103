"""The web console (issue 19): static files served at /console/ by the gateway itself.

The page needs no key: it holds no data, and every figure it shows comes from the public API, called
by the browser with the key the person types (kept in the tab's sessionStorage). So /console/* is a
local route of the gateway, never proxied, never in the merged OpenAPI document, and it adds no API
route. Its answers carry a strict Content-Security-Policy: scripts, styles, fonts and API calls from
the gateway's own origin only, no inline code, no framing.
"""
from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.responses import RedirectResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

CONSOLE_DIR = Path(__file__).parent / "console"
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; font-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidated on every load (a 304 when unchanged): a new release is picked up at once, and the
    # files are small.
    "Cache-Control": "no-cache",
}


class ConsoleFiles(StaticFiles):
    """StaticFiles whose answers (files, 304s) carry the console's security headers."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(SECURITY_HEADERS)
        return response


def mount_console(app: FastAPI) -> None:
    """Serve gateway/console/ at /console/ (`/console` redirects there, so relative links resolve)."""

    @app.get("/console", include_in_schema=False)
    async def console_root() -> RedirectResponse:
        return RedirectResponse("/console/", status_code=308, headers=SECURITY_HEADERS)

    app.mount("/console", ConsoleFiles(directory=CONSOLE_DIR, html=True), name="console")
