from __future__ import annotations

import pytest

from bridge.web.auth import AuthError, Identity, Role, TokenAuthority

SECRET = "k" * 40


def test_token_round_trip() -> None:
    authority = TokenAuthority(SECRET)
    identity = authority.verify(authority.issue("alice", Role.DISPATCHER))
    assert identity == Identity("alice", Role.DISPATCHER)


def test_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        TokenAuthority("short")


def test_forged_and_expired_tokens_are_refused() -> None:
    authority = TokenAuthority(SECRET)
    other = TokenAuthority("o" * 40)
    with pytest.raises(AuthError, match="token is invalid"):
        authority.verify(other.issue("mallory", Role.ADMIN))
    with pytest.raises(AuthError, match="token has expired"):
        authority.verify(authority.issue("bob", Role.OFFICER, ttl_s=-10))


def test_login_code_works_once() -> None:
    authority = TokenAuthority(SECRET)
    code = authority.login_code("demo", Role.DISPATCHER)
    identity, token = authority.redeem(code)
    assert identity.role is Role.DISPATCHER
    assert authority.verify(token).user == "demo"
    with pytest.raises(AuthError, match="unknown, used or expired"):
        authority.redeem(code)


def test_admin_has_every_role_and_observer_does_not() -> None:
    assert Identity("a", Role.ADMIN).has(Role.DISPATCHER)
    assert not Identity("o", Role.OBSERVER).has(Role.DISPATCHER)
    assert "secret" not in repr(TokenAuthority(SECRET)) or "hidden" in repr(TokenAuthority(SECRET))
