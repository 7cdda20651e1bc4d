from __future__ import annotations

from pathlib import Path

import pytest

from bridge.config import Config, ConfigError, load_config, parse_config
from bridge.model import RoomMode


def test_embedded_defaults_listen_on_loopback() -> None:
    config = load_config(None)
    assert config.server.host == "127.0.0.1"
    assert config.media.workers == 1
    assert config.media.room_rate == 16000
    assert config.state.backend == "memory"


def test_toml_overrides_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[media]\nworkers = 2\n[[rooms]]\nname = "tac-1"\nmode = "ptt"\n')
    config = load_config(path)
    assert config.media.workers == 2
    assert config.rooms[0].mode is RoomMode.PTT


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"media": {"wrokers": 2}}, "unknown config key: media.wrokers"),
        ({"bogus": 1}, "unknown config key: bogus"),
        ({"media": {"workers": 0}}, "bad config key media.workers: "),
        ({"server": {"port": 70000}}, "bad config key server.port: "),
        ({"media": {"room_rate": 11025}}, "bad config key media.room_rate: "),
        ({"console": {"presence_rate_hz": 0}}, "bad config key console.presence_rate_hz: "),
        (
            {"gateways": {"sip": {"listen_host": "0.0.0.0"}}},
            "bad config key gateways.sip.listen_host: ",
        ),
        ({"rooms": [{"name": "ok"}, {"name": "bad name!"}]}, "bad config key rooms[1].name: "),
        ({"server": {"tls_cert": "a.pem"}}, "tls_cert and tls_key must be given together"),
    ],
)
def test_bad_keys_are_named(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(data)
    assert message in str(exc.value)


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[media\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(bad)


def test_secret_is_not_in_repr() -> None:
    config = Config.model_validate({"auth": {"secret": "s3cr3t-value"}})
    assert "s3cr3t-value" not in repr(config)


def test_without_secrets_empties_every_secret_field_and_keeps_the_rest() -> None:
    from bridge.config import parse_config, without_secrets

    config = parse_config(
        {
            "auth": {"secret": "s3cret-signing-key"},
            "gateways": {
                "webrtc": {"turn_credential": "turn-pass"},
                "sip": {"pins": {"tac-1": "1234"}},
                "camera": {"cameras": [{"name": "c1", "url": "rtsp://admin:campass@10.0.0.9/s"}]},
            },
        }
    )
    data = without_secrets(config)
    text = repr(data)
    for secret in ("s3cret-signing-key", "turn-pass", "1234", "campass"):
        assert secret not in text
    assert data["auth"]["secret"] == ""
    assert data["gateways"]["camera"]["cameras"][0]["url"] == "rtsp://10.0.0.9/s"
    assert data["gateways"]["camera"]["cameras"][0]["username"] == "admin"
    assert parse_config(data).media == config.media  # what is left still validates
