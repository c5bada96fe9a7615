"""BentoML's request timeout, with its timer cancelled when the request is answered.

BentoML 1.4's `TimeoutMiddleware` schedules `loop.call_later(timeout, ...)` per request and never cancels
it, so every request's future and context (its OpenTelemetry spans with them) stay alive for the whole
`traffic.timeout`. Under load that is hundreds of thousands of requests' objects: full garbage collections
over them stalled the event loop for 0.1-1.5 s, growing with uptime (measured with one client on /livez:
p50 0.3 ms, stalls of 84, 104, ..., 515 ms in 30 s). This subclass keeps the behaviour (504 when the
first byte is not sent in time) and cancels the timer once the request is done. `install()` puts it where
BentoML looks it up when it builds the app, in the worker that imports the service module.
"""

import asyncio
from typing import Any

from bentoml._internal.server.http import traffic

from serving.http import error_response


class TimeoutMiddleware(traffic.TimeoutMiddleware):
    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

        async def _send(message: Any) -> None:
            if not waiter.done():
                waiter.set_result(None)
            await send(message)

        fut = asyncio.ensure_future(self.app(scope, receive, _send))
        try:
            await waiter
        except TimeoutError:
            if fut.cancel():  # in OpenAI's error shape, as every other error of the service
                message = f"the request was not answered within {self.timeout} seconds"
                await error_response(504, message, "timeout")(scope, receive, send)
        else:
            await fut
        finally:
            timer.cancel()


def install() -> None:
    traffic.TimeoutMiddleware = TimeoutMiddleware  # type: ignore[misc]
