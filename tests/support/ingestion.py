"""A local stand-in for Application Insights' ingestion endpoint: it accepts and keeps every telemetry envelope."""

from __future__ import annotations

import gzip
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.support.ports import free_port


class Ingestion:
    def __init__(self) -> None:
        self.envelopes: list[dict] = []
        self.paths: list[str] = []
        envelopes, paths = self.envelopes, self.paths

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.headers.get("content-encoding") == "gzip":
                    raw = gzip.decompress(raw)
                paths.append(self.path)
                items = json.loads(raw) if raw.strip() else []
                envelopes.extend(items if isinstance(items, list) else [items])
                reply = json.dumps({"itemsReceived": len(items), "itemsAccepted": len(items), "errors": []}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *_: object) -> None:
                pass

        self.port = free_port()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def connection_string(self) -> str:
        endpoint = f"http://127.0.0.1:{self.port}/"
        return (
            "InstrumentationKey=00000000-0000-0000-0000-000000000000;"
            f"IngestionEndpoint={endpoint};LiveEndpoint={endpoint}"
        )

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
