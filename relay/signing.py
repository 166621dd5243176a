"""Standard Webhooks signatures (https://www.standardwebhooks.com/).

``webhook-signature`` is ``v1,`` + base64(HMAC-SHA256(secret, f"{id}.{timestamp}.{body}")),
where the secret is the base64 part of ``whsec_...``. During a secret rotation it holds
one such signature per secret, space-separated (``v1,abc v1,def``), as the spec allows:
a consumer holding any one of the secrets verifies.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping, Sequence

from relay.errors import SignatureError

SECRET_PREFIX = "whsec_"
#: How far a webhook-timestamp may be from now before :func:`verify` refuses it.
TIMESTAMP_TOLERANCE = 300


def decode_secret(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret; raises ValueError when malformed."""
    raw = secret.strip()
    if raw.startswith(SECRET_PREFIX):
        raw = raw[len(SECRET_PREFIX) :]
    try:
        key = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        msg = "is not whsec_ followed by base64"
        raise ValueError(msg) from None
    if len(key) < 16:
        msg = "is shorter than 16 bytes once decoded"
        raise ValueError(msg)
    return key


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one attempt; refuses an empty ``key``
    (a webhook of another format has none: nothing signs with it)."""
    if not key:
        msg = "refusing to sign with an empty key"
        raise ValueError(msg)
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def headers(
    key: bytes, msg_id: str, timestamp: int, body: bytes, *, also: Sequence[bytes] = ()
) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt, signed with ``key`` and with
    each key in ``also`` (a rotation's other secrets)."""
    signatures = " ".join(sign(k, msg_id, timestamp, body) for k in (key, *also))
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signatures,
    }


def verify(key: bytes, headers: Mapping[str, str], body: bytes, now: float) -> None:
    """Check a delivery's signature as a consumer would; raise :class:`SignatureError`.

    ``headers`` must be keyed in lower case.
    """
    if not key:
        msg = "no key to verify with"
        raise SignatureError(msg)
    try:
        msg_id = headers["webhook-id"]
        timestamp = int(headers["webhook-timestamp"])
        signatures = headers["webhook-signature"]
    except (KeyError, ValueError):
        msg = "missing or malformed webhook-* headers"
        raise SignatureError(msg) from None
    if abs(now - timestamp) > TIMESTAMP_TOLERANCE:
        msg = f"webhook-timestamp {timestamp} is too far from now"
        raise SignatureError(msg)
    expected = sign(key, msg_id, timestamp, body).encode()
    for candidate in signatures.split():
        if hmac.compare_digest(candidate.encode(), expected):
            return
    raise SignatureError
