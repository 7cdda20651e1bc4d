"""Secrets in request bodies never reach the audit log (``web/audit_api.py``)."""

from __future__ import annotations

import pytest

from bridge.web.audit_api import MASK, is_secret_key, without_secrets


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "Password",
        "PASSWORD",
        "passphrase",
        "password_env",
        "secret",
        "clientSecret",
        "token",
        "access_token",
        "Refresh-Token",
        "key",
        "api_key",
        "apiKey",
        "PRIVATE_KEY",
    ],
)
def test_secret_sounding_keys_are_masked_whatever_their_case(key: str) -> None:
    assert is_secret_key(key)
    assert without_secrets({key: "hunter2"}) == {key: MASK}


@pytest.mark.parametrize(
    "key",
    [
        "name",
        "url",
        "username",
        "uri",
        "account",
        "room",
        "participant",
        "floor_request_key",
        "floor_release_key",
        "keyframe_interval",
        "Keyframes",
    ],
)
def test_harmless_keys_are_kept(key: str) -> None:
    assert not is_secret_key(key)
    assert without_secrets({key: "value"}) == {key: "value"}


def test_nested_bodies_and_url_credentials_are_cleaned() -> None:
    body = {
        "name": "cam-1",
        "url": "rtsp://admin:pw@10.0.0.9/stream",
        "options": [{"Api-Key": "k"}, {"transport": "tcp"}],
    }
    assert without_secrets(body) == {
        "name": "cam-1",
        "url": f"rtsp://{MASK}@10.0.0.9/stream",
        "options": [{"Api-Key": MASK}, {"transport": "tcp"}],
    }
