"""The operator dashboard: a static page at `/` that polls the node's JSON API.

No build step and nothing from the internet: `index.html`, the ES modules
(`*.js`) and `style.css` ship inside this package and are read once, when
the application is built, through importlib.resources, so they are found
in a wheel as in a source tree.  The browser renders everything from
`/v1/status`, `/v1/throughput`, `/v1/quarantine` and `/v1/conflicts`, so
the page shows exactly what the API shows and the server has no template
code to keep in step with it.

The Content-Security-Policy lets the page load scripts, styles and data
from the node only: a value a peer sent (a key, a conflict's value, an
error text) that slipped into the page as markup still could not run or
fetch anything.  app.js only ever sets such values as text.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

INDEX = "index.html"
ASSET_PATH = "/dashboard/{name}"
CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css"}
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        " connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidate, so that a node upgraded in place serves its new page at once.
    "Cache-Control": "no-cache",
}


def add_dashboard(app: web.Application) -> None:
    """Serve the page at `/` and its scripts and style under `/dashboard/`."""
    files = resources.files(__package__)
    index = files.joinpath(INDEX).read_bytes()
    assets: dict[str, tuple[bytes, str]] = {}
    for entry in files.iterdir():
        suffix = entry.name[entry.name.rfind(".") :]
        if suffix in CONTENT_TYPES:
            assets[entry.name] = (entry.read_bytes(), CONTENT_TYPES[suffix])

    async def page(_request: web.Request) -> web.Response:
        return web.Response(body=index, content_type="text/html", charset="utf-8", headers=HEADERS)

    async def asset(request: web.Request) -> web.Response:
        # A fixed set read at start: a request names a file, never a path.
        found = assets.get(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound()
        body, content_type = found
        return web.Response(body=body, content_type=content_type, charset="utf-8", headers=HEADERS)

    app.router.add_get("/", page)
    app.router.add_get(ASSET_PATH, asset)
