"""The disconnect watcher against ASGI apps of its own: a hang-up after the body and before the response cancels the
app; after the response started it is only handed to the app's receive(); nothing else is cancelled or swallowed."""

from __future__ import annotations

import asyncio

import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.api.disconnect import DisconnectWatcher
from server.telemetry.logging import AccessRecord, access_record_var

SCOPE: Scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": []}


def _watched(app: ASGIApp) -> DisconnectWatcher:
    return DisconnectWatcher(app, paths=("/v1/",))


class Client:
    """The ASGI server's side: a body in one message, then receive() blocks until the client hangs up."""

    def __init__(self) -> None:
        self.hung_up = asyncio.Event()
        self.sent: list[Message] = []
        self._body_given = False

    async def receive(self) -> Message:
        if not self._body_given:
            self._body_given = True
            return {"type": "http.request", "body": b"{}", "more_body": False}
        await self.hung_up.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    async def hangs_up_on(self, app: ASGIApp, scope: Scope = SCOPE) -> asyncio.Task[None]:
        """`app` running behind the watcher, this client hanging up once the app has read its body."""
        running = asyncio.create_task(_watched(app)(scope, self.receive, self.send))
        await asyncio.sleep(0.05)
        self.hung_up.set()
        return running


async def _answer(send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def test_a_hang_up_before_the_answer_cancels_the_request_and_is_logged_as_499() -> None:
    client, unwound = Client(), asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        try:
            await asyncio.sleep(60)  # a generation
        finally:
            unwound.set()
        await _answer(send)

    record = AccessRecord(method="POST", path=SCOPE["path"])
    token = access_record_var.set(record)
    try:
        running = await client.hangs_up_on(app)
        await asyncio.wait_for(running, 5)  # ends by itself, without raising
    finally:
        access_record_var.reset(token)
    assert unwound.is_set() and client.sent == []
    assert record.status == 499
    assert running.cancelling() == 0


async def test_cleanup_that_awaits_still_runs_after_the_hang_up() -> None:
    """The stages' bookkeeping awaits as it unwinds (the engine's close, a thread's end): one cancellation, not more."""
    client, cleaned = Client(), asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        try:
            await asyncio.sleep(60)
        finally:
            await asyncio.sleep(0.05)
            cleaned.set()

    running = await client.hangs_up_on(app)
    await asyncio.wait_for(running, 5)
    assert cleaned.is_set()


async def test_a_started_response_is_not_cancelled_and_its_receive_hears_the_hang_up() -> None:
    """A stream's response has started: its own listener (sse-starlette's) is told, and decides."""
    client, heard = Client(), asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        assert (await receive())["type"] == "http.disconnect"
        heard.set()
        await asyncio.sleep(0.05)  # not cancelled meanwhile
        await send({"type": "http.response.body", "body": b"end"})

    running = await client.hangs_up_on(app)
    await asyncio.wait_for(running, 5)
    assert heard.is_set() and client.sent[-1]["body"] == b"end"


async def test_an_answered_request_leaves_no_watcher_behind() -> None:
    client = Client()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await _answer(send)

    before = asyncio.all_tasks()
    await _watched(app)(SCOPE, client.receive, client.send)
    await asyncio.sleep(0.01)
    assert [m["type"] for m in client.sent] == ["http.response.start", "http.response.body"]
    assert asyncio.all_tasks() - before == set()


async def test_a_cancellation_from_elsewhere_is_not_swallowed() -> None:
    """The server's own cancellation (a shutdown) goes on up, whether or not the client also left."""
    client = Client()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await asyncio.sleep(60)

    running = asyncio.create_task(_watched(app)(SCOPE, client.receive, client.send))
    await asyncio.sleep(0.05)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running


async def test_a_request_that_never_read_its_body_is_not_watched() -> None:
    """Refused before its body (a wrong key): nothing reads on its behalf, so the server can close the connection."""
    client, reads = Client(), 0
    original = client.receive

    async def counted() -> Message:
        nonlocal reads
        reads += 1
        return await original()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await _answer(send)

    await _watched(app)(SCOPE, counted, client.send)
    assert reads == 0


async def test_a_path_it_is_not_given_is_not_watched() -> None:
    """An admin call runs to its end whoever hangs up: a key change is not cut halfway."""
    client, ended = Client(), asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await client.hung_up.wait()
        await asyncio.sleep(0.05)
        ended.set()

    running = await client.hangs_up_on(app, {**SCOPE, "path": "/admin/keys"})
    await asyncio.wait_for(running, 5)
    assert ended.is_set()


async def test_an_app_that_turns_the_cancellation_into_an_error_raises_it_and_is_not_left_cancelling() -> None:
    client = Client()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            raise RuntimeError("a driver's own error for a cancelled call") from None

    running = await client.hangs_up_on(app)
    with pytest.raises(RuntimeError):
        await asyncio.wait_for(running, 5)
    assert running.cancelling() == 0
