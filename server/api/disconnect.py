"""A client that hangs up before its answer has begun ends its request: the request's task is cancelled, and its stages
unwind as for a stream whose client went away (the tokens generated so far charged, the audit row written with 499,
the engine's slot and the model's lease given back).

Without it, a request whose answer is sent whole (a chat completion, embeddings, a Responses or Messages call that
does not stream) would run to its end for nobody: the ASGI server only reports a hang-up to an app that calls
`receive()` again after the body, and nothing in a route does. So, once the app has read the whole body, this layer
keeps calling `receive()` itself. A hang-up before the response has started cancels the app; after it has started
(a stream), the hang-up is handed to the app's own `receive()` calls as they come, which is how a stream's response
(sse-starlette's listener) finds out, unchanged.

Only the paths it is given are watched (the API's, where models run): an operator's admin call runs to its end, as a
key change cut halfway by a dropped connection is worse than an answer nobody reads.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.serving.stages.record import CLIENT_CLOSED
from server.telemetry.logging import access_record_var

log = logging.getLogger(__name__)


class DisconnectWatcher:
    def __init__(self, app: ASGIApp, paths: tuple[str, ...]) -> None:
        self.app = app
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        if scope["type"] != "http" or task is None or not scope["path"].startswith(self.paths):
            await self.app(scope, receive, send)
            return
        watch = _Watch(task, receive, send)
        ours_ended = False
        try:
            await self.app(scope, watch.receive, watch.send)
        except asyncio.CancelledError:
            if not watch.cancelled_app:
                raise
            ours_ended = True
            if task.uncancel() > 0:  # the server cancelled it too (shutting down): that goes on up
                raise
            log.info("the client went away before its answer began: its request was stopped")
            if (record := access_record_var.get()) is not None:
                record.status = CLIENT_CLOSED
        finally:
            watch.stop()
            if watch.cancelled_app and not ours_ended:
                # The app took the cancellation and ended otherwise (returned, or raised an error of its own): the
                # task must not stay marked as being cancelled.
                task.uncancel()


class _Watch:
    """One request's receive channel once its body is read: the watcher task owns the server's `receive()` and the
    app's own calls wait for what it heard."""

    def __init__(self, task: asyncio.Task[object], receive: Receive, send: Send) -> None:
        self._task = task
        self._receive = receive
        self._send = send
        self._watcher: asyncio.Task[None] | None = None
        self._gone = asyncio.Event()
        self._response_started = False
        self._app_ended = False
        self.cancelled_app = False

    async def receive(self) -> Message:
        if self._watcher is not None:
            await self._gone.wait()
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.request" and not message.get("more_body", False) and not self._app_ended:
            self._watcher = asyncio.create_task(self._watch(), name="disconnect-watcher")
        return message

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self._response_started = True  # before the await: a hang-up from here on is the response's to notice
        await self._send(message)

    def stop(self) -> None:
        self._app_ended = True
        if self._watcher is not None:
            self._watcher.cancel()

    async def _watch(self) -> None:
        # After the body, an ASGI server's receive() returns only once the client has gone (or the response ended).
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self._gone.set()
        if not self._response_started and not self._app_ended:
            self.cancelled_app = True
            self._task.cancel()
