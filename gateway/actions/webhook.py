"""LAN webhooks: HTTP POST of a JSON object, with the action's timeout (e.g. a community display server, a
building management system). Any 2xx answer is success; anything else, a refused connection or the
timeout fails the attempt (the dispatcher retries). Redirects are not followed.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

from lifeline.gateway.actions import ActionFailed
from lifeline.gateway.rules_engine.model import WebhookOutput

MAX_BODY = 64 * 1024


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


class Webhook:
    def __init__(self, name: str, spec: WebhookOutput) -> None:
        self.name = name
        self.spec = spec
        self.posts = 0

    async def start(self) -> None:
        return None

    def url(self, path: str | None) -> str:
        base = self.spec.url
        if not path:
            return base
        return base.rstrip("/") + "/" + urllib.parse.quote(path.lstrip("/"), safe="/-_.~=&?")

    async def post(self, path: str | None, body: Mapping[str, Any], timeout_s: float) -> int:
        data = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
        if len(data) > MAX_BODY:
            raise ActionFailed(f"body of {len(data)} bytes is over {MAX_BODY}")
        url = self.url(path)
        headers = {"Content-Type": "application/json", "User-Agent": "lifeline-gateway", **self.spec.headers}
        req = urllib.request.Request(url, data=data, headers=headers, method="POST")
        status = await asyncio.to_thread(self._post, req, timeout_s)
        self.posts += 1
        return status

    @staticmethod
    def _post(req: urllib.request.Request, timeout_s: float) -> int:
        host = urllib.parse.urlsplit(req.full_url).netloc
        try:
            with _OPENER.open(req, timeout=timeout_s) as resp:
                resp.read(MAX_BODY)
                status = int(resp.status)
        except urllib.error.HTTPError as e:
            raise ActionFailed(f"{host}: HTTP {e.code}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ActionFailed(f"{host}: {type(reason).__name__ if not isinstance(reason, str) else reason}") from None
        if not 200 <= status < 300:
            raise ActionFailed(f"{host}: HTTP {status}")
        return status

    async def close(self) -> None:
        return None
