"""Signing webhook deliveries the way fal does, with locally generated Ed25519 keys.

The message is four lines joined by "\n": request id, user id, timestamp, and the
lowercase hex SHA-256 of the raw body; the signature travels hex-encoded in
``X-Fal-Webhook-Signature``. The public keys are published as a JWKS.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def _b64url(raw: bytes) -> str:
    # fal publishes x without padding; verifiers must restore it.
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class WebhookSigner:
    def __init__(self, user_id: str = "fal-test-user") -> None:
        self.user_id = user_id
        self._keys: list[tuple[str, Ed25519PrivateKey]] = []
        self.rotate()

    def rotate(self, *, keep_old: bool = True) -> str:
        """Start signing with a new key; the JWKS lists it (and the old ones if kept)."""
        kid = uuid.uuid4().hex[:16]
        key = Ed25519PrivateKey.generate()
        self._keys = ([*self._keys] if keep_old else []) + [(kid, key)]
        return kid

    def jwks(self) -> dict:
        keys = []
        for kid, key in self._keys:
            raw = key.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
            keys.append(
                {"kty": "OKP", "crv": "Ed25519", "x": _b64url(raw), "kid": kid, "use": "sig"}
            )
        return {"keys": keys}

    def headers(
        self,
        body: bytes,
        request_id: str,
        *,
        timestamp: int | None = None,
        user_id: str | None = None,
    ) -> dict[str, str]:
        """The four X-Fal-Webhook-* headers for ``body``, signed with the newest key."""
        timestamp = int(time.time()) if timestamp is None else timestamp
        user_id = self.user_id if user_id is None else user_id
        message = "\n".join(
            [request_id, user_id, str(timestamp), hashlib.sha256(body).hexdigest()]
        ).encode()
        signature = self._keys[-1][1].sign(message).hex()
        return {
            "X-Fal-Webhook-Request-Id": request_id,
            "X-Fal-Webhook-User-Id": user_id,
            "X-Fal-Webhook-Timestamp": str(timestamp),
            "X-Fal-Webhook-Signature": signature,
        }


def delivery_body(
    request_id: str,
    *,
    status: str = "OK",
    payload: dict | None = None,
    error: str | None = None,
    payload_error: str | None = None,
) -> bytes:
    """A webhook body in fal's real shape."""
    body: dict = {
        "request_id": request_id,
        "gateway_request_id": request_id,
        "status": status,
        "payload": payload,
    }
    if error is not None:
        body["error"] = error
    if payload_error is not None:
        body["payload_error"] = payload_error
    return json.dumps(body).encode()


def lora_payload(request_id: str) -> dict:
    """What the trainers return: the LoRA and its config as fal File objects."""
    base = f"https://v3.fal.media/files/demo/{request_id}"
    return {
        "diffusers_lora_file": {
            "url": f"{base}/pytorch_lora_weights.safetensors",
            "content_type": "application/octet-stream",
            "file_name": "pytorch_lora_weights.safetensors",
            "file_size": 89745224,
        },
        "config_file": {
            "url": f"{base}/config.json",
            "content_type": "application/json",
            "file_name": "config.json",
            "file_size": 1024,
        },
    }
