"""Token auth with roles: signed JWTs (HS256, PyJWT), one-time demo login codes.

Roles are dispatcher, officer, observer and admin. There are no default credentials:
outside demo mode a token comes from ``ucbridge token`` (which needs the signing secret),
and in demo mode ``serve`` prints a one-time login link. Tokens and secrets are never
logged.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import jwt

ALGORITHM = "HS256"
ISSUER = "ucbridge"
#: Shortest acceptable signing secret, in bytes.
MIN_SECRET_LENGTH = 32
#: A one-time login code is good for this long.
LOGIN_CODE_TTL_S = 600


class Role(StrEnum):
    DISPATCHER = "dispatcher"
    OFFICER = "officer"
    OBSERVER = "observer"
    ADMIN = "admin"


class AuthError(Exception):
    """Authentication failed; the message says why (never with the token in it)."""


#: Why an identity whose token has run out may no longer act.
EXPIRED = "token has expired"


@dataclass(frozen=True)
class Identity:
    user: str
    role: Role
    #: The token's ``exp`` claim (seconds since the epoch), or None when it has none.
    #: Not part of equality: the same user and role is the same identity.
    expires: int | None = field(default=None, compare=False)

    def has(self, *roles: Role) -> bool:
        return self.role in roles or self.role == Role.ADMIN

    def expired(self, now: float | None = None) -> bool:
        """Whether the token this identity came from has run out (as :meth:`verify` says)."""
        if self.expires is None:
            return False
        return (time.time() if now is None else now) >= self.expires


def new_secret() -> str:
    return secrets.token_urlsafe(48)


class TokenAuthority:
    """Issues and checks tokens with one secret."""

    def __init__(self, secret: str, ttl_s: int = 12 * 3600) -> None:
        if len(secret.encode()) < MIN_SECRET_LENGTH:
            raise ValueError(
                f"auth secret must be at least {MIN_SECRET_LENGTH} bytes "
                "(set auth.secret or UCBRIDGE_AUTH_SECRET)"
            )
        self._secret = secret
        self.ttl_s = ttl_s
        self._codes: dict[str, tuple[float, Identity]] = {}

    def __repr__(self) -> str:
        return "TokenAuthority(secret=<hidden>)"

    def issue(self, user: str, role: Role, ttl_s: int | None = None) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "sub": user,
            "role": str(role),
            "iss": ISSUER,
            "iat": now,
            "exp": now + (ttl_s or self.ttl_s),
        }
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def verify(self, token: str) -> Identity:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                issuer=ISSUER,
                options={"require": ["exp", "sub", "role"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError(EXPIRED) from None
        except jwt.InvalidTokenError:
            raise AuthError("token is invalid") from None
        try:
            role = Role(claims["role"])
        except ValueError:
            raise AuthError("token has an unknown role") from None
        return Identity(user=str(claims["sub"]), role=role, expires=int(claims["exp"]))

    def login_code(self, user: str, role: Role) -> str:
        """A one-time code that :meth:`redeem` turns into a token once."""
        code = secrets.token_urlsafe(24)
        self._codes[code] = (time.monotonic() + LOGIN_CODE_TTL_S, Identity(user, role))
        return code

    def redeem(self, code: str) -> tuple[Identity, str]:
        entry = self._codes.pop(code, None)
        if entry is None or entry[0] < time.monotonic():
            raise AuthError("login code is unknown, used or expired")
        identity = entry[1]
        return identity, self.issue(identity.user, identity.role)
