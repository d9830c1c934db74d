"""Config loading: home, defaults, plugin sections, unknown keys, bad values, env override,
secret references and redaction."""

from __future__ import annotations

from pathlib import Path

import librefang
import pytest
from librefang.app import build_app
from librefang.config import Config, default_home, redact
from librefang.errors import ConfigError
from librefang.testing import make_client
from pydantic import BaseModel, Field

REMOTE = {"client": ("203.0.113.9", 40000)}


class GreeterConfig(BaseModel):
    greeting: str = "hello"
    repeat: int = Field(1, ge=1, le=10)
    bot_token: str = ""


class GreeterPlugin:
    @librefang.hookimpl
    def register_config(self, register):
        register("greeter", GreeterConfig)


def test_default_home_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("LIBREFANG_HOME", str(tmp_path / "h"))
    assert default_home() == tmp_path / "h"
    monkeypatch.delenv("LIBREFANG_HOME")
    assert default_home() == Path.home() / ".librefang"


def test_missing_file_gives_defaults(librefang_home):
    config = Config.load(librefang_home)
    assert config.core.api_listen == "127.0.0.1:4545"
    assert config.core.rate_limit.api_requests_per_minute == 500
    assert config.database_url() == f"sqlite+aiosqlite:///{librefang_home / 'data' / 'librefang.db'}"


def test_template_is_valid_and_commented(librefang_home):
    from librefang.config import CONFIG_TEMPLATE
    from librefang.home import init_home

    init_home(librefang_home)
    text = (librefang_home / "config.toml").read_text()
    assert text == CONFIG_TEMPLATE and text.count("\n#") > 10
    config = Config.load(librefang_home)
    assert config.core.log_level == "info"


def test_unknown_keys_are_kept(librefang_home):
    (librefang_home / "config.toml").write_text(
        'future_key = 7\n[rate_limit]\nburst_hint = 3\n[mystery]\nanswer = "yes"\n'
    )
    effective = Config.load(librefang_home).effective()
    assert effective["future_key"] == 7
    assert effective["rate_limit"]["burst_hint"] == 3
    assert effective["rate_limit"]["api_requests_per_minute"] == 500
    assert effective["mystery"] == {"answer": "yes"}


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[rate_limit]\napi_requests_per_minute = "lots"\n', "rate_limit.api_requests_per_minute"),
        ('log_level = "loud"\n', "log_level"),
        ("max_request_body_bytes = 5\n", "max_request_body_bytes"),
        ("[plugins]\ndisabled = 3\n", "plugins.disabled"),
    ],
)
def test_bad_value_names_the_key(librefang_home, text, key):
    (librefang_home / "config.toml").write_text(text)
    with pytest.raises(ConfigError) as info:
        Config.load(librefang_home)
    assert key in str(info.value)


def test_syntax_error_names_file_and_line(librefang_home):
    (librefang_home / "config.toml").write_text('log_level = "info"\napi_key = "sk-live-abcdef123456\n')
    with pytest.raises(ConfigError) as info:
        Config.load(librefang_home)
    message = str(info.value)
    assert "config.toml" in message and "line 2" in message
    assert "abcdef123456" not in message


def test_errors_never_echo_secret_values(librefang_home):
    secret = "sk-live-abcdef123456"
    (librefang_home / "config.toml").write_text(f'max_request_body_bytes = "{secret}"\n[greeter]\nrepeat = "{secret}"\n')
    with pytest.raises(ConfigError) as info:
        Config.load(librefang_home)
    assert secret not in str(info.value)
    (librefang_home / "config.toml").write_text(f'[greeter]\nrepeat = "{secret}"\n')
    config = Config.load(librefang_home)
    with pytest.raises(ConfigError) as info:
        config.add_section("greeter", GreeterConfig, "greeter")
    assert "greeter.repeat" in str(info.value) and secret not in str(info.value)


async def test_plugin_section_registered_and_validated(make_kernel):
    kernel = await make_kernel(
        plugins={"greeter": GreeterPlugin()}, load_entry_points=False,
        config='[greeter]\ngreeting = "hi"\nextra_knob = true\n',
    )
    section = kernel.config.section("greeter")
    assert section.greeting == "hi" and section.repeat == 1
    assert kernel.config.section_owners["greeter"] == "greeter"
    assert kernel.config.effective()["greeter"] == {"greeting": "hi", "repeat": 1, "bot_token": ""}
    assert kernel.config.raw["greeter"]["extra_knob"] is True  # unknown key kept in the raw file view


async def test_bad_plugin_section_value_fails_start_naming_key(make_kernel):
    with pytest.raises(ConfigError, match=r"greeter\.repeat"):
        await make_kernel(plugins={"greeter": GreeterPlugin()}, load_entry_points=False,
                          config="[greeter]\nrepeat = 99\n")


async def test_plugin_cannot_take_a_core_section(make_kernel):
    class Thief:
        @librefang.hookimpl
        def register_config(self, register):
            register("rate_limit", GreeterConfig)

    kernel = await make_kernel(plugins={"thief": Thief()}, load_entry_points=False)
    record = kernel.plugins.records["thief"]
    assert record.error and "rate_limit" in record.error


async def test_schema_has_core_and_plugin_sections(make_kernel):
    kernel = await make_kernel(plugins={"greeter": GreeterPlugin()}, load_entry_points=False)
    schema = kernel.config.json_schema()
    props = schema["properties"]
    assert {"api_listen", "log_level", "rate_limit", "audit", "plugins", "greeter"} <= set(props)
    assert props["greeter"]["x-plugin"] == "greeter"
    assert props["greeter"]["properties"]["repeat"]["maximum"] == 10


async def test_env_api_key_overrides_file(make_kernel, monkeypatch):
    monkeypatch.setenv("LIBREFANG_API_KEY", "env-key-123456")
    kernel = await make_kernel(load_entry_points=False, config='api_key = "file-key-123456"\n')
    assert kernel.config.core.api_key == "env-key-123456"
    client = make_client(build_app(kernel))
    ok = await client.get("/api/status", headers={"Authorization": "Bearer env-key-123456"}, scope_base=REMOTE)
    assert ok.status_code == 200
    refused = await client.get("/api/status", headers={"Authorization": "Bearer file-key-123456"}, scope_base=REMOTE)
    assert refused.status_code == 401


async def test_env_reference_resolves_api_key(make_kernel, monkeypatch):
    monkeypatch.setenv("MY_DAEMON_KEY", "from-the-env-987654")
    kernel = await make_kernel(load_entry_points=False, config='api_key = "env:MY_DAEMON_KEY"\n')
    client = make_client(build_app(kernel))
    ok = await client.get("/api/status", headers={"Authorization": "Bearer from-the-env-987654"}, scope_base=REMOTE)
    assert ok.status_code == 200
    literal = await client.get("/api/status", headers={"Authorization": "Bearer env:MY_DAEMON_KEY"}, scope_base=REMOTE)
    assert literal.status_code == 401
    assert kernel.secret("env:UNSET_VARIABLE_XYZ") == ""


def test_database_url_forms(librefang_home, monkeypatch):
    pg = Config(librefang_home, {"database_url": "postgres://u:pw@db.example/lf"})
    assert pg.database_url() == "postgresql+asyncpg://u:pw@db.example/lf"
    monkeypatch.setenv("LF_DB", "postgresql://u:pw@db.example/lf2")
    assert Config(librefang_home, {"database_url": "env:LF_DB"}).database_url() == "postgresql+asyncpg://u:pw@db.example/lf2"
    with pytest.raises(ConfigError, match="database_url"):
        Config(librefang_home, {"database_url": "env:LF_DB_UNSET"}).database_url()


def test_redact_hides_secret_names_and_url_credentials():
    data = {
        "api_key": "abc", "empty_token": "", "greeter": {"bot_token": "t0k3n", "greeting": "hi"},
        "database_url": "postgresql://user:hunter22@db/x", "api_key_env": "OPENAI_API_KEY",
        "list": [{"password": "p"}],
    }
    out = redact(data)
    assert out["api_key"] == "***" and out["empty_token"] == "not set"
    assert out["greeter"] == {"bot_token": "***", "greeting": "hi"}
    assert out["database_url"] == "postgresql://***@db/x"
    assert out["api_key_env"] == "OPENAI_API_KEY"  # the name of a variable is not a secret
    assert out["list"] == [{"password": "***"}]


async def test_api_config_never_shows_secrets(make_kernel):
    secrets = ["sk-file-key-abcdef", "bot-token-xyz123", "hunter22pw"]
    kernel = await make_kernel(
        plugins={"greeter": GreeterPlugin()}, load_entry_points=False,
        config=(f'api_key = "{secrets[0]}"\ndatabase_url = ""\nbackup_url = "https://admin:{secrets[2]}@b.example/"\n'
                f'[greeter]\nbot_token = "{secrets[1]}"\n'),
    )
    client = make_client(build_app(kernel))
    response = await client.get("/api/config", headers={"Authorization": f"Bearer {secrets[0]}"})
    assert response.status_code == 200
    text = (await response.get_data()).decode()
    for secret in secrets:
        assert secret not in text
    body = await response.get_json()
    assert body["api_key"] == "***" and body["greeter"]["bot_token"] == "***"
    assert body["rate_limit"]["api_requests_per_minute"] == 500  # every core leaf is present
