"""uvicorn's httptools protocol, telling every request of a connection that its client went away.

uvicorn marks only the connection's latest request as disconnected when the connection is lost. A client that sends
a second request behind its first (HTTP/1.1 pipelining: the second's headers are enough) and hangs up makes the
first one, still running, never hear it: the disconnect watcher (server/api/disconnect.py) does not stop it, it runs
to its end for nobody, and its answer is then written to a closed transport (a traceback, logged as an unhandled
error). This protocol remembers the requests a pipelined one took the place of, and tells them too.
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle


class PipeliningAwareProtocol(HttpToolsProtocol):
    def on_headers_complete(self) -> None:
        earlier: RequestResponseCycle | None = self.cycle  # None before the first request
        super().on_headers_complete()
        if earlier is not None and earlier is not self.cycle and not earlier.response_complete:
            running: list[RequestResponseCycle] = getattr(self, "_earlier_cycles", [])
            self._earlier_cycles = [c for c in running if not c.response_complete] + [earlier]

    def connection_lost(self, exc: Exception | None) -> None:
        for cycle in getattr(self, "_earlier_cycles", ()):
            if not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()
        self._earlier_cycles = []
        super().connection_lost(exc)
