"""One webhook: the body it is sent, the signed POST, and what its answer means."""

from __future__ import annotations

import asyncio
import json
from contextlib import aclosing
from dataclasses import dataclass
from datetime import datetime, timezone

import httpx

from relay import __version__, decoding, signing
from relay.clock import Clock, within
from relay.config import WebhookConfig
from relay.retry import parse_retry_after
from relay.store import DueDelivery

EVENT_TYPE = "sms.received"
USER_AGENT = f"aatrox-relay/{__version__}"
#: How much of a webhook's answer is read; the rest is ignored.
MAX_ANSWER_BYTES = 64 * 1024


def iso(when: datetime, timespec: str = "auto") -> str:
    """ISO 8601 in UTC with a ``Z``."""
    return when.astimezone(timezone.utc).isoformat(timespec=timespec).replace("+00:00", "Z")


def body(delivery: DueDelivery, relayed_at: datetime) -> bytes:
    """The JSON body of an ``sms.received`` delivery, UTF-8, non-ASCII kept as is."""
    doc = {
        "type": EVENT_TYPE,
        "timestamp": iso(relayed_at, "milliseconds"),
        "data": {
            "id": delivery.provider_id,
            "number": delivery.number,
            "from": delivery.sender,
            "to": delivery.recipient,
            "text": delivery.text,
            "received_at": iso(delivery.received_at),
        },
    }
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


@dataclass(frozen=True)
class Answer:
    """What one attempt came to."""

    ok: bool
    status: int | None = None
    #: One line for the store and logs: "HTTP 503", "timed out after 15s"...
    error: str | None = None
    #: Seconds the webhook asked us to wait (429 and 503 only).
    retry_after: float | None = None
    #: Do not retry (410 Gone).
    final: bool = False
    #: The answer's body, decoded, cut at :data:`MAX_ANSWER_BYTES`.
    body: bytes = b""
    #: Why the body could not be read, when it could not (its status still counts).
    body_error: str | None = None


class Webhook:
    """Sends deliveries to one configured webhook."""

    def __init__(self, config: WebhookConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self._client = httpx.AsyncClient(
            timeout=config.timeout,
            follow_redirects=False,
            limits=httpx.Limits(
                max_connections=config.concurrency, max_keepalive_connections=config.concurrency
            ),
            headers={
                "User-Agent": USER_AGENT,
                "Accept-Encoding": decoding.ACCEPT_ENCODING,
                **dict(config.headers),
            },
        )

    async def send(self, delivery: DueDelivery) -> Answer:
        """POST ``delivery``, signed, and classify the answer. Never raises for the network."""
        now = self.clock.now()
        payload = body(delivery, now)
        headers = signing.headers(
            self.config.secret,
            delivery.webhook_id,
            int(now.timestamp()),
            payload,
            also=self.config.extra_secrets,
        )
        headers["Content-Type"] = "application/json"
        try:
            return await within(self.config.timeout + 1.0, self._post(payload, headers))
        except (asyncio.TimeoutError, httpx.TimeoutException):
            return Answer(False, error=f"timed out after {self.config.timeout:g}s")
        except httpx.TransportError as exc:
            return Answer(False, error=f"{type(exc).__name__}: {exc}"[:200] or "transport error")

    async def _post(self, payload: bytes, headers: dict[str, str]) -> Answer:
        request = self._client.build_request(
            "POST", self.config.url, content=payload, headers=headers
        )
        response = await self._client.send(request, stream=True)
        try:
            answer, body_error = await _read(response)
        finally:
            await response.aclose()
        status = response.status_code
        if 200 <= status < 300:
            return Answer(True, status, body=answer, body_error=body_error)
        error = f"HTTP {status}"
        if 300 <= status < 400:
            error += " (redirects are not followed)"
        retry_after = None
        if status in (429, 503):
            retry_after = parse_retry_after(response.headers.get("retry-after"), self.clock.now())
        return Answer(False, status, error=error, retry_after=retry_after, final=status == 410)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()


async def _read(response: httpx.Response) -> tuple[bytes, str | None]:
    """The body, decoded (``Content-Encoding``, a bounded step at a time: see
    :mod:`relay.decoding`), cut at :data:`MAX_ANSWER_BYTES`, and why it cannot be used:
    it does not decode, or it is larger than that once decoded (reading stops there)."""
    parts: list[bytes] = []
    size = 0
    try:
        async with aclosing(decoding.aiter_decoded(response)) as chunks:
            async for chunk in chunks:
                parts.append(chunk[: MAX_ANSWER_BYTES - size])
                size += len(chunk)
                if size > MAX_ANSWER_BYTES:
                    decoded = " once decoded" if decoding.is_encoded(response) else ""
                    error = f"the answer exceeds {MAX_ANSWER_BYTES} bytes{decoded}; stopped reading"
                    return b"".join(parts), error
    except decoding.UndecodableBody as exc:
        return b"", f"the answer's {exc}"
    return b"".join(parts), None
