"""Standard Webhooks signatures (standardwebhooks.com, "Verifying webhooks").

The signed content is ``{webhook-id}.{webhook-timestamp}.{body}``; the signature is
HMAC-SHA256 under the secret's bytes (the base64 after ``whsec_``), sent as
``webhook-signature: v1,<base64>``. A receiver verifies with the reference library::

    from standardwebhooks import Webhook
    payload = Webhook(secret).verify(body, headers)   # raises on a bad signature

tests/test_webhooks_pure.py checks these headers against that library.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

__all__ = ["PREFIX", "SecretError", "decode_secret", "headers", "signature"]

PREFIX = "whsec_"


class SecretError(ValueError):
    """A secret that is not ``whsec_`` + base64 of at least 16 bytes."""


def decode_secret(secret: str) -> bytes:
    """The key bytes of a ``whsec_...`` secret (surrounding whitespace ignored)."""
    text = secret.strip()
    if not text.startswith(PREFIX):
        raise SecretError("must start with 'whsec_' (Standard Webhooks)")
    try:
        key = base64.b64decode(text[len(PREFIX) :], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SecretError("is not base64 after 'whsec_'") from exc
    if len(key) < 16:
        raise SecretError("is shorter than 16 bytes (24 base64 characters)")
    return key


def signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(key: bytes, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three headers of one attempt (the timestamp is the attempt's, per the spec)."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(key, msg_id, timestamp, body),
        "content-type": "application/json",
    }
