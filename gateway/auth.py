"""API keys -> tenant, and what each key may use.

Keys are stored as sha256 hex digests (in the config's ``api_keys``); the raw key never
appears in a log. With no keys configured and ``require_auth`` false, requests are anonymous.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from gateway.config import APIKeyConfig, GatewayConfig
from gateway.errors import AuthenticationFailed, PermissionDenied

__all__ = ["Authenticator", "hash_key"]


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class Authenticator:
    def __init__(self, config: GatewayConfig) -> None:
        self.required = config.require_auth or bool(config.api_keys)
        self._keys: dict[str, APIKeyConfig] = {k.sha256: k for k in config.api_keys}
        self._policies = {p.name for p in config.policies}

    def identify(self, headers: Iterable[tuple[bytes, bytes]]) -> APIKeyConfig | None:
        token = None
        for k, v in headers:
            if k == b"authorization":
                val = v.decode("latin-1").strip()
                if val[:7].lower() == "bearer ":
                    token = val[7:].strip()
                break
            if k == b"x-api-key":
                token = v.decode("latin-1").strip()
        if not self.required:
            return None
        if not token:
            raise AuthenticationFailed("missing API key: send 'Authorization: Bearer <key>'")
        digest = hash_key(token)
        for stored, cfg in self._keys.items():
            if hmac.compare_digest(stored, digest):
                return cfg
        raise AuthenticationFailed("invalid API key")

    def check(self, headers: Iterable[tuple[bytes, bytes]], model: str | None) -> str:
        """Authenticate and authorise ``model``; returns the tenant name."""
        key = self.identify(headers)
        if key is None:
            return "anonymous"
        if model is not None:
            allowed = key.policies if model in self._policies else key.experts
            if "*" not in allowed and model not in allowed:
                kind = "policy" if model in self._policies else "model"
                raise PermissionDenied(f"this API key may not use the {kind} '{model}'",
                                       param="model")
        return key.name
