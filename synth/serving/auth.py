"""Optional bearer-token auth: the token comes from an environment variable of the replica."""
from __future__ import annotations

import hmac
import os

from synth.errors import ConfigError


def load_token(env_name: str | None) -> bytes | None:
    """The expected token, or None when auth is off. A named but empty variable fails closed."""
    if not env_name:
        return None
    value = os.environ.get(env_name, "")
    if not value.strip():
        raise ConfigError(f"auth_token_env is {env_name!r} but that environment variable is unset or empty in "
                          "the replica; set it (e.g. from a Kubernetes secret) or drop auth_token_env")
    return value.strip().encode()


def authorized(expected: bytes | None, header: str | None) -> bool:
    """True when auth is off or `header` is 'Bearer <token>' with the right token (constant-time)."""
    if expected is None:
        return True
    if not header:
        return False
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(token.strip().encode(), expected)
