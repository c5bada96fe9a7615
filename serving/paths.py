"""A request's path as BentoML's traffic metrics, its spans and its access log see it.

They take the path as sent: a path that no endpoint has (free text from a client that needs no key for a
404: an e-mail address, say) became a label of `bentoml_service_request_*` on the open /metrics, a new
series for each, written to the multiprocess metric files, and a line of the access log. `install` has
BentoML's metrics middleware, the outermost, show such a request (and every websocket connection, which
no endpoint takes) to itself and to what follows it as `UNKNOWN` with no query string, and a static file
as its folder's `/{file}`; `PathAsSent`, the service's own outermost middleware, puts the path back
for the routes and handlers, which answer as before (a 404 that names the path to its client).
"""

from typing import Any

from starlette._utils import get_route_path
from starlette.routing import Match, Mount

UNKNOWN = "/{unknown}"
_SENT = "stratmaster.sent"  # the scope's path, raw path and query string as sent


def path_label(routes: list[Any], scope: dict[str, Any]) -> str:
    """The path as metrics and logs may show it: as sent where a route takes it (with any method), its
    template where the route takes a parameter (`/v1/models/{model_id}`), a mounted app's prefix and
    `/{file}` where that app has no routes of its own (static files: any name may be asked for, found or
    not), else `UNKNOWN`."""
    for route in routes:
        match, child = route.matches(scope)
        if match is Match.NONE:
            continue
        included = getattr(getattr(route, "original_router", None), "routes", None)
        if included is not None:  # FastAPI's included router (BentoML's for a service's methods)
            return path_label(included, scope)  # its routes, matched as it does (UNKNOWN under a prefix)
        if not isinstance(route, Mount):
            if not getattr(route, "param_convertors", None):
                return scope["path"]
            template = getattr(route, "path_format", None)  # a Host route's parameters are no path's
            if not isinstance(template, str):
                return UNKNOWN
            mounted_at = scope["path"][: len(scope["path"]) - len(get_route_path(scope))]
            return mounted_at + template
        if not route.routes:
            return f"{route.path}/{{file}}"
        return path_label(route.routes, {**scope, **child})
    return UNKNOWN


def install() -> None:
    from bentoml._internal.server.http import instruments

    base = instruments.RunnerTrafficMetricsMiddleware
    if getattr(base, "hides_unknown_paths", False):
        return

    class HidesUnknownPaths(base):  # type: ignore[misc,valid-type]
        hides_unknown_paths = True

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            app = scope.get("app")
            if scope["type"] in ("http", "websocket") and app is not None:
                # a websocket scope matches no route here: every one is UNKNOWN
                label = (
                    path_label(app.routes, {**scope, "type": "http"}) if scope["type"] == "http" else UNKNOWN
                )
                if label != scope["path"] or scope.get("query_string"):  # no endpoint takes a query
                    sent = {k: scope[k] for k in ("path", "raw_path", "query_string") if k in scope}
                    hidden = {"path": label, "raw_path": label.encode(), "query_string": b"", _SENT: sent}
                    scope = {**scope, **hidden}
            await super().__call__(scope, receive, send)

    instruments.RunnerTrafficMetricsMiddleware = HidesUnknownPaths  # type: ignore[misc]


class PathAsSent:
    """ASGI middleware, the service's outermost: the path `install`'s middleware hid, put back."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        sent = scope.get(_SENT)
        if sent is not None:
            scope = {**{k: v for k, v in scope.items() if k != _SENT}, **sent}
        await self.app(scope, receive, send)
