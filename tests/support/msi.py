"""A local managed-identity token endpoint, the one DefaultAzureCredential calls inside Azure (App Service style
IDENTITY_ENDPOINT/IDENTITY_HEADER). Azurite checks a token's issuer, audience and lifetime, not its signature."""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from tests.support.ports import free_port

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def unsigned_token(audience: str) -> str:
    now = int(time.time())
    claims = {
        "aud": audience,
        "iss": f"https://sts.windows.net/{TENANT}/",
        "iat": now,
        "nbf": now - 60,
        "exp": now + 3600,
        "oid": "00000000-0000-0000-0000-000000000001",
        "tid": TENANT,
    }
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}.sig"


class TokenEndpoint:
    """Serves GET /msi/token?resource=...; `requests` counts the tokens handed out.

    `lifetime_s` sets how long tokens live; `fixed` maps an audience (the resource without `/.default`) to the token to
    hand out for it, so a test can make a database password of it and rotate it.
    """

    def __init__(self, lifetime_s: int = 3600) -> None:
        self.requests: list[str] = []
        self.lifetime_s = lifetime_s
        self.fixed: dict[str, str] = {}
        self.port = free_port()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = parse_qs(urlparse(self.path).query)
                resource = query.get("resource", [""])[0]
                if self.headers.get("X-IDENTITY-HEADER") != "x" or not resource:
                    self.send_response(400)
                    self.end_headers()
                    return
                endpoint.requests.append(resource)
                audience = resource.removesuffix("/.default").rstrip("/")
                body = json.dumps(
                    {
                        "access_token": endpoint.fixed.get(audience) or unsigned_token(audience),
                        "expires_on": str(int(time.time()) + endpoint.lifetime_s),
                        "resource": resource,
                        "token_type": "Bearer",
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def env(self) -> dict[str, str]:
        return {
            "IDENTITY_ENDPOINT": f"http://127.0.0.1:{self.port}/msi/token",
            "IDENTITY_HEADER": "x",
            "AZURE_TOKEN_CREDENTIALS": "ManagedIdentityCredential",
        }

    def stop(self) -> None:
        self._server.shutdown()
