"""A local Key Vault stand-in over HTTPS, for the real azure-keyvault-secrets SDK.

It speaks the part of the protocol the SDK uses for reads: an unauthenticated first request gets a 401 whose
`WWW-Authenticate` challenge names the token's resource; the retry carries a bearer token (from the managed-identity
stand-in) whose audience is checked; `GET /secrets/{name}` answers the secret or 404 SecretNotFound.

The SDK insists that the vault's host name be a subdomain of the challenge's resource, which no IP address is, so the
vault is addressed by a name under the reserved `.test` domain and reached through a small CONNECT proxy that sends
every tunnel to 127.0.0.1 (set `HTTPS_PROXY`). Nothing leaves the machine.
"""

from __future__ import annotations

import base64
import json
import select
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

from tests.support.azurite import self_signed_cert
from tests.support.msi import TENANT
from tests.support.ports import free_port

VAULT_HOST = "ggufstack.vault.test"


def _audience(authorization: str) -> str | None:
    token = authorization.removeprefix("Bearer ").strip()
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return None
    return claims.get("aud")


class KeyVaultStandIn:
    def __init__(self, workdir: Path, secrets: dict[str, str]) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.secrets = dict(secrets)
        self.reads: list[str] = []  # names of secrets read with a valid token
        self.port = free_port()
        self.resource = f"https://vault.test:{self.port}"
        self.cert, key = self_signed_cert(workdir, (VAULT_HOST,))
        vault = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if _audience(self.headers.get("Authorization", "")) != vault.resource:
                    challenge = (
                        f'Bearer authorization="https://login.microsoftonline.com/{TENANT}", '
                        f'resource="{vault.resource}"'
                    )
                    self._send(401, {"error": {"code": "Unauthorized"}}, {"WWW-Authenticate": challenge})
                    return
                parts = urlparse(self.path).path.strip("/").split("/")
                if len(parts) < 2 or parts[0] != "secrets" or parts[1] not in vault.secrets:
                    self._send(404, {"error": {"code": "SecretNotFound", "message": "no such secret"}})
                    return
                vault.reads.append(parts[1])
                url = f"https://{VAULT_HOST}:{vault.port}/secrets/{parts[1]}/0123456789abcdef"
                self._send(200, {"value": vault.secrets[parts[1]], "id": url, "attributes": {"enabled": True}})

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, key)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self._proxy = _TunnelProxy()

    @property
    def url(self) -> str:
        return f"https://{VAULT_HOST}:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """What a client process needs to reach the stand-in: the proxy, and trust in its certificate."""
        return {
            "HTTPS_PROXY": f"http://127.0.0.1:{self._proxy.port}",
            "NO_PROXY": "127.0.0.1,localhost",
            "REQUESTS_CA_BUNDLE": str(self.cert),
        }

    def stop(self) -> None:
        self._server.shutdown()
        self._proxy.stop()


class _TunnelProxy:
    """An HTTP CONNECT proxy that tunnels every request to 127.0.0.1 on the requested port."""

    def __init__(self) -> None:
        self.port = free_port()

        class Handler(BaseHTTPRequestHandler):
            def do_CONNECT(self) -> None:
                _, _, port = self.path.rpartition(":")
                try:
                    upstream = socket.create_connection(("127.0.0.1", int(port)), timeout=10)
                except (OSError, ValueError):
                    self.send_error(502)
                    return
                self.send_response(200, "Connection established")
                self.end_headers()
                sockets = [self.connection, upstream]
                try:
                    while True:
                        readable, _, _ = select.select(sockets, [], [], 30)
                        if not readable:
                            return
                        for source in readable:
                            data = source.recv(65536)
                            if not data:
                                return
                            (upstream if source is self.connection else self.connection).sendall(data)
                finally:
                    upstream.close()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
