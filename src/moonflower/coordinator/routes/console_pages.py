"""The console's pages: `/console/` (the app), `/console/device` (approving a machine's
device login), `/status` (the public status page) and their assets under `/console/static/`.

The pages are static files shipped inside the package (`moonflower/console/static`), with no
build step; they talk to the JSON routes. Every page is sent with a Content-Security-Policy
that allows only this origin's scripts, styles and connections (no inline script, no
framing), and no Referer, so a user code in the URL goes nowhere else.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import APIRouter
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.staticfiles import StaticFiles

router = APIRouter(include_in_schema=False)

STATIC_DIR = Path(str(resources.files("moonflower.console") / "static"))
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


def static_files() -> StaticFiles:
    return StaticFiles(directory=STATIC_DIR)


def _page(name: str) -> Response:
    return FileResponse(STATIC_DIR / name, media_type="text/html", headers=PAGE_HEADERS)


@router.get("/console")
async def console_root() -> Response:
    return RedirectResponse("/console/", status_code=308)


@router.get("/console/")
async def console() -> Response:
    return _page("index.html")


@router.get("/console/device")
async def device_page() -> Response:
    return _page("index.html")


@router.get("/status")
async def status_page() -> Response:
    return _page("status.html")
