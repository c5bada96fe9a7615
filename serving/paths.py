"""A request's path as BentoML's traffic metrics, its spans and its access log see it.

They take the path as sent: a path that no endpoint has (free text from a client that needs no key for a
404: an e-mail address, say) became a label of `bentoml_service_request_*` on the open /metrics, a new
series for each, written to the multiprocess metric files, and a line of the access log. `install` has
BentoML's metrics middleware, the outermost, show such a request to itself and to what follows it as
`UNKNOWN` with no query string; `PathAsSent`, the service's own outermost middleware, puts the path back
for the routes and handlers, which answer as before (a 404 that names the path to its client).
"""

from typing import Any

from starlette.routing import Match, Mount

UNKNOWN = "/{unknown}"
_SENT = "stratmaster.sent"  # the scope's path, raw path and query string as sent


def has_route(routes: list[Any], scope: dict[str, Any]) -> bool:
    """Whether a route (or a route of a mounted app) takes the scope's path, with any method."""
    for route in routes:
        match, child = route.matches(scope)
        if match is Match.NONE:
            continue
        inner = route.routes if isinstance(route, Mount) else None
        return has_route(inner, {**scope, **child}) if inner else True  # static files: no routes, taken
    return False


def install() -> None:
    from bentoml._internal.server.http import instruments

    base = instruments.RunnerTrafficMetricsMiddleware
    if getattr(base, "hides_unknown_paths", False):
        return

    class HidesUnknownPaths(base):  # type: ignore[misc,valid-type]
        hides_unknown_paths = True

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            app = scope.get("app")
            if scope["type"] == "http" and app is not None and not has_route(app.routes, scope):
                sent = {k: scope[k] for k in ("path", "raw_path", "query_string") if k in scope}
                hidden = {"path": UNKNOWN, "raw_path": UNKNOWN.encode(), "query_string": b"", _SENT: sent}
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
