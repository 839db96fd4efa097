"""`load_config`: precedence, parsing, validation and the messages users see."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest
from click.testing import CliRunner

from fluidity.agent.settings import AgentConfig, is_loopback
from fluidity.server.settings import ServerConfig, StaticHosts
from fluidity.settings import ConfigError, command, default_config_file, load_config, redacted

WriteYaml = Callable[[object], str]


def load_agent(
    path: str | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, object] | None = None,
) -> AgentConfig:
    return load_config(AgentConfig, path=path, env=env or {}, flags=flags or {})


def load_server(
    path: str | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, object] | None = None,
) -> ServerConfig:
    return load_config(ServerConfig, path=path, env=env or {}, flags=flags or {})


def assert_names_setting(message: str, key: str) -> None:
    """Messages name the setting all three ways."""
    assert key in message
    assert "FLUIDITY_" + key.upper() in message
    assert "--" + key.replace("_", "-") in message


# -- precedence -----------------------------------------------------------------------------


def test_defaults(agent_certs: dict[str, str]) -> None:
    config = load_agent(flags=agent_certs)
    assert config == AgentConfig(
        ca_cert=agent_certs["ca_cert"],
        client_cert=agent_certs["client_cert"],
        client_key=agent_certs["client_key"],
    )
    assert config.listen_host == "127.0.0.1"
    assert config.listen_port == 8080
    assert config.server_name == "fluidity-server"
    assert config.proxy_auth is None


@pytest.mark.parametrize(
    ("in_yaml", "in_env", "in_flags", "expected"),
    [
        (False, False, False, 8080),
        (True, False, False, 1001),
        (True, True, False, 1002),
        (False, True, False, 1002),
        (True, True, True, 1003),
        (False, False, True, 1003),
    ],
)
def test_precedence_defaults_yaml_env_flags(
    agent_certs: dict[str, str],
    write_yaml: WriteYaml,
    in_yaml: bool,
    in_env: bool,
    in_flags: bool,
    expected: int,
) -> None:
    path = write_yaml({**agent_certs, "listen_port": 1001}) if in_yaml else None
    env = {"FLUIDITY_LISTEN_PORT": "1002"} if in_env else {}
    flags: dict[str, object] = {"listen_port": 1003 if in_flags else None}
    if not in_yaml:
        flags.update(agent_certs)
    assert load_agent(path, env, flags).listen_port == expected


def test_flags_set_to_none_do_not_override(
    agent_certs: dict[str, str], write_yaml: WriteYaml
) -> None:
    path = write_yaml({**agent_certs, "server_host": "198.51.100.4", "connect_timeout": 3})
    flags = {"server_host": None, "connect_timeout": None, "ca_cert": None}
    config = load_agent(path, {"FLUIDITY_CONNECT_TIMEOUT": "4.5"}, flags)
    assert config.server_host == "198.51.100.4"
    assert config.connect_timeout == 4.5
    assert config.ca_cert == agent_certs["ca_cert"]


def test_config_path_from_environment(agent_certs: dict[str, str], write_yaml: WriteYaml) -> None:
    path = write_yaml({**agent_certs, "server_port": 9443})
    assert load_agent(env={"FLUIDITY_CONFIG": path}).server_port == 9443


def test_path_argument_wins_over_environment(
    agent_certs: dict[str, str], write_yaml: WriteYaml, tmp_path: Path
) -> None:
    path = write_yaml({**agent_certs, "server_port": 9443})
    missing = str(tmp_path / "other.yaml")
    assert load_agent(path, env={"FLUIDITY_CONFIG": missing}).server_port == 9443


def test_other_environment_variables_are_ignored(agent_certs: dict[str, str]) -> None:
    config = load_agent(env={"HOME": "/root", "FLUIDITYX": "1"}, flags=agent_certs)
    assert config.listen_port == 8080


# -- the config file ------------------------------------------------------------------------


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file .*nope.yaml does not exist.*--config"):
        load_agent(str(tmp_path / "nope.yaml"))


def test_yaml_must_be_a_mapping(write_yaml: WriteYaml) -> None:
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_agent(write_yaml("- listen_port\n- 8080\n"))


def test_yaml_syntax_error_names_the_line(write_yaml: WriteYaml) -> None:
    with pytest.raises(ConfigError, match="not valid YAML at line 2"):
        load_agent(write_yaml("listen_port: 1\nserver_host: a: b\n"))


def test_empty_yaml_is_fine(agent_certs: dict[str, str], write_yaml: WriteYaml) -> None:
    assert load_agent(write_yaml(""), flags=agent_certs).listen_port == 8080


def test_unknown_yaml_key_suggests_the_closest(write_yaml: WriteYaml) -> None:
    with pytest.raises(ConfigError) as info:
        load_agent(write_yaml({"listen_prot": 1}))
    message = str(info.value)
    assert "unknown setting key `listen_prot`" in message
    assert "did you mean `listen_port`?" in message
    assert info.value.key == "listen_prot"


def test_unknown_yaml_key_with_dashes(write_yaml: WriteYaml) -> None:
    with pytest.raises(ConfigError, match="did you mean `server_name`"):
        load_agent(write_yaml({"server-name": "x"}))


def test_unknown_key_without_a_close_match(write_yaml: WriteYaml) -> None:
    with pytest.raises(ConfigError, match=r"unknown setting key `zzz`.*--help"):
        load_agent(write_yaml({"zzz": 1}))


def test_yaml_key_of_the_other_process(write_yaml: WriteYaml) -> None:
    with pytest.raises(
        ConfigError, match=r"`egress_allow`.* setting of the server, not of the agent"
    ):
        load_agent(write_yaml({"egress_allow": []}))


# -- the environment ------------------------------------------------------------------------


def test_unknown_env_var_suggests_the_closest() -> None:
    with pytest.raises(ConfigError) as info:
        load_agent(env={"FLUIDITY_SERVER_PROT": "1"})
    assert "unknown setting FLUIDITY_SERVER_PROT" in str(info.value)
    assert "did you mean FLUIDITY_SERVER_PORT?" in str(info.value)


def test_env_vars_of_the_other_process_are_left_to_it(server_certs: dict[str, str]) -> None:
    # One shell may export both processes' settings; each takes its own.
    env = {"FLUIDITY_" + key.upper(): value for key, value in server_certs.items()}
    config = load_server(env={**env, "FLUIDITY_CLIENT_KEY": "x", "FLUIDITY_LISTEN_PORT": "9000"})
    assert config.listen_port == 9000


def test_a_misspelt_env_var_is_still_an_error_with_the_other_process_known() -> None:
    with pytest.raises(ConfigError, match="unknown setting FLUIDITY_CLIENT_KYE"):
        load_server(env={"FLUIDITY_CLIENT_KYE": "x"})


def test_env_values_are_parsed(server_certs: dict[str, str]) -> None:
    config = load_server(
        env={
            "FLUIDITY_LISTEN_PORT": " 9000 ",
            "FLUIDITY_UPSTREAM_READ_TIMEOUT": "2.5",
            "FLUIDITY_EGRESS_ALLOW": "10.1.0.0/16, 192.0.2.7,",
            "FLUIDITY_EGRESS_DENY": "",
            "FLUIDITY_STATIC_HOSTS": "db.internal=10.1.2.3, Web.Internal.=fd00::1",
            "FLUIDITY_READY_FILE": "",
        },
        flags=server_certs,
    )
    assert config.listen_port == 9000
    assert config.upstream_read_timeout == 2.5
    assert config.egress_allow == ("10.1.0.0/16", "192.0.2.7/32")
    assert config.egress_deny == ()
    assert config.static_hosts == {"db.internal": "10.1.2.3", "web.internal": "fd00::1"}
    assert config.ready_file is None


@attrs.frozen
class Toy:
    """A config class with the kinds the real ones do not use (yet)."""

    verbose: bool = attrs.field(default=False, metadata={"help": "Talk more."})
    names: tuple[str, ...] = attrs.field(default=(), metadata={"help": "Some names."})

    def check(self) -> None:
        """No checks across these settings."""


@pytest.mark.parametrize(
    ("text", "expected"), [("true", True), ("YES", True), ("1", True), ("off", False), ("0", False)]
)
def test_env_booleans(text: str, expected: bool) -> None:
    config = load_config(Toy, path=None, env={"FLUIDITY_VERBOSE": text}, flags={})
    assert config.verbose is expected


def test_bad_env_boolean() -> None:
    with pytest.raises(ConfigError, match=r"verbose .* expected a boolean"):
        load_config(Toy, path=None, env={"FLUIDITY_VERBOSE": "maybe"}, flags={})


# -- bad values -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("listen_port", "eighty", "expected an integer"),
        ("listen_port", "65536", "expected a port from 0 to 65535"),
        ("listen_port", "-1", "expected a port"),
        ("server_port", "0", "expected a port from 1 to 65535"),
        ("connect_timeout", "soon", "expected a number"),
        ("connect_timeout", "0", "greater than 0"),
        ("connect_timeout", "nan", "finite"),
        ("shutdown_grace", "-1", "0 or more"),
        ("log_level", "verbose", "expected one of debug, info, warning, error"),
        ("log_format", "xml", "expected one of text, json"),
        ("server_name", "not a name", "expected a DNS name"),
        ("listen_host", "   ", "must not be empty"),
        ("ready_file", "/no/such/dir/ready.json", "does not exist"),
        ("max_window", "65536", "from 262144 (256 KiB, the initial window)"),
        ("max_window", str(2**31), "to 2**31 - 1"),
        ("receive_budget", "-1", "0 or more (0: windows never grow)"),
    ],
)
def test_bad_env_value_names_key_and_expectation(
    agent_certs: dict[str, str], key: str, value: str, expected: str
) -> None:
    env_var = "FLUIDITY_" + key.upper()
    with pytest.raises(ConfigError) as info:
        load_agent(env={env_var: value}, flags=agent_certs)
    message = str(info.value)
    assert expected in message
    assert f"in environment variable {env_var}" in message
    assert_names_setting(message, key)
    assert info.value.key == key


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("listen_port", True, "expected an integer"),
        ("listen_port", 80.5, "expected an integer"),
        ("connect_timeout", [1], "expected a number"),
        ("server_name", 42, "expected a string (quote it in YAML)"),
        ("listen_host", None, "must not be empty"),
    ],
)
def test_bad_yaml_value(
    agent_certs: dict[str, str], write_yaml: WriteYaml, key: str, value: object, expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_agent(write_yaml({**agent_certs, key: value}))
    assert expected in str(info.value)
    assert "in config file" in str(info.value)
    assert_names_setting(str(info.value), key)


def test_yaml_strings_are_parsed_like_env(
    agent_certs: dict[str, str], write_yaml: WriteYaml
) -> None:
    config = load_agent(write_yaml({**agent_certs, "listen_port": "8090", "connect_timeout": 2}))
    assert config.listen_port == 8090
    assert config.connect_timeout == 2.0
    assert isinstance(config.connect_timeout, float)


def test_bad_flag_value(agent_certs: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="from flag --listen-port: expected a port"):
        load_agent(flags={**agent_certs, "listen_port": 99999})


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("egress_allow", "10.0.0.1/8", "has host bits set; did you mean 10.0.0.0/8?"),
        ("egress_deny", "example.com", "is not a CIDR block"),
        ("static_hosts", "db=10.0.0.300", "is not an IP address"),
        ("static_hosts", "db", "is not name=value"),
        ("static_hosts", "db=10.0.0.1,DB=10.0.0.2", "db given more than once"),
        ("resolver", "dns", "expected one of system, static"),
        ("max_links", "0", "at least 1"),
    ],
)
def test_bad_server_values(
    server_certs: dict[str, str], key: str, value: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_server(env={"FLUIDITY_" + key.upper(): value}, flags=server_certs)
    assert expected in str(info.value)
    assert_names_setting(str(info.value), key)


def test_cross_checks(agent_certs: dict[str, str], server_certs: dict[str, str]) -> None:
    with pytest.raises(
        ConfigError, match="keepalive_timeout must be greater than keepalive_interval"
    ):
        load_agent(flags={**agent_certs, "keepalive_interval": 20.0, "keepalive_timeout": 10.0})
    with pytest.raises(
        ConfigError, match="reconnect_max_delay must be at least reconnect_min_delay"
    ):
        load_agent(flags={**agent_certs, "reconnect_min_delay": 5.0, "reconnect_max_delay": 1.0})
    assert load_agent(flags={**agent_certs, "reconnect_min_delay": 2, "reconnect_max_delay": 2})
    with pytest.raises(ConfigError, match="health_port and listen_port are both 9000"):
        load_server(flags={**server_certs, "listen_port": 9000, "health_port": 9000})
    assert load_server(flags={**server_certs, "listen_port": 0, "health_port": 0})


def test_secret_values_are_not_echoed(agent_certs: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_agent(env={"FLUIDITY_PROXY_AUTH": "hunter2hunter2"}, flags=agent_certs)
    assert "hunter2" not in str(info.value)
    assert "expected user:password" in str(info.value)


# -- proxy_auth off loopback ----------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "laptop.lan"])
def test_proxy_auth_required_off_loopback(agent_certs: dict[str, str], host: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_agent(flags={**agent_certs, "listen_host": host})
    assert "proxy_auth is required" in str(info.value)
    assert_names_setting(str(info.value), "proxy_auth")
    assert info.value.key == "proxy_auth"
    config = load_agent(flags={**agent_certs, "listen_host": host, "proxy_auth": "me:pw"})
    assert config.proxy_auth == "me:pw"


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_loopback_needs_no_proxy_auth(agent_certs: dict[str, str], host: str) -> None:
    assert is_loopback(host)
    assert load_agent(flags={**agent_certs, "listen_host": host}).proxy_auth is None


# -- certificates ---------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["ca_cert", "client_cert", "client_key"])
def test_agent_certs_are_required(agent_certs: dict[str, str], missing: str) -> None:
    del agent_certs[missing]
    with pytest.raises(ConfigError) as info:
        load_agent(flags=agent_certs)
    message = str(info.value)
    assert f"{missing} is required" in message
    assert "fluidity certs init" in message
    assert_names_setting(message, missing)


@pytest.mark.parametrize("missing", ["ca_cert", "server_cert", "server_key"])
def test_server_certs_are_required(server_certs: dict[str, str], missing: str) -> None:
    server_certs[missing] = ""  # an empty env var or flag means "not set"
    with pytest.raises(ConfigError, match=f"{missing} is required.*fluidity certs init"):
        load_server(flags=server_certs)


def test_cert_path_must_exist(agent_certs: dict[str, str], tmp_path: Path) -> None:
    missing = str(tmp_path / "gone.pem")
    with pytest.raises(ConfigError) as info:
        load_agent(flags={**agent_certs, "client_cert": missing})
    assert f"file '{missing}' does not exist" in str(info.value)
    assert_names_setting(str(info.value), "client_cert")


def test_cert_file_must_be_pem(agent_certs: dict[str, str], tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(ConfigError, match=r"invalid ca_cert .* is not PEM"):
        load_agent(flags={**agent_certs, "ca_cert": str(junk)})


def test_key_must_match_certificate(agent_certs: dict[str, str], cert_dir: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_agent(flags={**agent_certs, "client_key": str(cert_dir / "server-key.pem")})
    message = str(info.value)
    assert "client_key belongs to client_cert" in message
    assert "FLUIDITY_CLIENT_KEY" in message
    assert "BEGIN" not in message


def test_pem_text_in_environment(server_certs: dict[str, str]) -> None:
    env = {
        "FLUIDITY_SERVER_CERT": Path(server_certs["server_cert"]).read_text(),
        # single-line form with escaped newlines, as some secret stores produce
        "FLUIDITY_SERVER_KEY": Path(server_certs["server_key"]).read_text().replace("\n", "\\n"),
        "FLUIDITY_CA_CERT": Path(server_certs["ca_cert"]).read_text(),
    }
    config = load_server(env=env)
    assert config.server_cert == env["FLUIDITY_SERVER_CERT"].strip()


# -- the values themselves ------------------------------------------------------------------


def test_configs_are_frozen_and_hashable(server_certs: dict[str, str]) -> None:
    config = load_server(flags={**server_certs, "static_hosts": ("a.example=192.0.2.1",)})
    assert hash(config) == hash(
        load_server(flags={**server_certs, "static_hosts": "a.example=192.0.2.1"})
    )
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.listen_port = 1  # type: ignore[misc]


def test_static_hosts_lookup_ignores_case_and_trailing_dot() -> None:
    hosts = StaticHosts({"Intranet.Example": "10.0.0.1"})
    assert hosts["intranet.example."] == "10.0.0.1"
    assert "INTRANET.example" in hosts
    assert hosts.get("other") is None
    assert dict(hosts) == {"intranet.example": "10.0.0.1"}
    assert ServerConfig(static_hosts={"a": "192.0.2.1"}).static_hosts == StaticHosts(
        {"a": "192.0.2.1"}
    )


def test_redacted_masks_secrets_only(agent_certs: dict[str, str], cert_dir: Path) -> None:
    key_text = (cert_dir / "client-key.pem").read_text()
    config = load_agent(
        flags={**agent_certs, "client_key": key_text, "proxy_auth": "alice:s3cret-pw"}
    )
    out = redacted(config)
    assert out["proxy_auth"] == "alice:***"
    assert out["client_key"] == f"<PEM text, {len(key_text.strip())} characters>"
    assert out["ca_cert"] == agent_certs["ca_cert"]  # a path is not a secret
    assert out["listen_port"] == 8080
    assert "s3cret" not in repr(out)
    assert "PRIVATE KEY" not in repr(out)
    assert set(out) == {f.name for f in attrs.fields(AgentConfig)}


def test_redacted_server_is_plain_data(server_certs: dict[str, str]) -> None:
    out = redacted(load_server(flags={**server_certs, "egress_deny": ("198.51.100.0/24",)}))
    assert out["egress_deny"] == ["198.51.100.0/24"]
    assert out["static_hosts"] == {}


# -- the command ----------------------------------------------------------------------------


def capture(cls: type[Any], args: list[str], env: Mapping[str, str] | None = None) -> Any:
    """The settings `command(cls)` loads from `args` and `env` (and hands to its `run`)."""
    result = CliRunner().invoke(
        command(cls, lambda config: config, ""), args, obj=env or {}, standalone_mode=False
    )
    assert result.exit_code == 0, result.output
    return result.return_value


def test_unset_flags_change_nothing(server_certs: dict[str, str]) -> None:
    env = {"FLUIDITY_" + key.upper(): value for key, value in server_certs.items()}
    assert capture(ServerConfig, [], env) == load_server(flags=server_certs)


def test_flags_reach_the_loader(server_certs: dict[str, str], write_yaml: WriteYaml) -> None:
    path = write_yaml({**server_certs, "listen_port": 9000, "log_format": "text"})
    config = capture(
        ServerConfig,
        [
            "--listen-port", "9001",
            "--egress-allow", "10.0.0.0/8",
            "--egress-allow", "10.9.0.0/16,10.8.0.0/16",
            "--static-hosts", "a=192.0.2.1",
            "--log-format", "json",
            "--config", path,
        ],
    )  # fmt: skip
    assert config.listen_port == 9001
    assert config.egress_allow == ("10.0.0.0/8", "10.9.0.0/16", "10.8.0.0/16")
    assert config.static_hosts == {"a": "192.0.2.1"}
    assert config.log_format == "json"
    assert config.server_cert == server_certs["server_cert"]


@pytest.mark.parametrize("cls", [AgentConfig, ServerConfig])
def test_help_documents_every_setting(cls: type[attrs.AttrsInstance]) -> None:
    result = CliRunner().invoke(command(cls, print, ""), ["--help"], terminal_width=200)
    text = " ".join(result.output.split())
    for field in attrs.fields(cls):
        assert "--" + field.name.replace("_", "-") in text
        assert "FLUIDITY_" + field.name.upper() in text
        assert field.metadata["help"].replace("`", "").split(".")[0] in text
    assert "--config" in text
    assert "[default: 8080; env: FLUIDITY_LISTEN_PORT]" in text or cls is ServerConfig
    assert "--listen-port INTEGER" in text
    assert "--log-level [debug|info|warning|error]" in text


def test_boolean_and_list_flags() -> None:
    assert capture(Toy, []) == Toy()
    config = capture(Toy, ["--no-verbose", "--names", "a,b", "--names", "c"], {})
    assert config == Toy(verbose=False, names=("a", "b", "c"))
    assert capture(Toy, ["--verbose"]) == Toy(verbose=True)


def test_relative_paths_in_a_config_file_are_relative_to_the_file(
    cert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file, not the working directory: a process starts the same from anywhere."""
    config = cert_dir.parent / "agent.yaml"
    config.write_text(
        "ca_cert: certs/ca.pem\nclient_cert: certs/client.pem\nclient_key: certs/client-key.pem\n"
        "ready_file: ready.json\n"
    )
    monkeypatch.chdir(tmp_path)  # elsewhere: certs/ca.pem does not exist here
    loaded = load_config(AgentConfig, path=str(config), env={})
    assert loaded.ca_cert == str(cert_dir / "ca.pem")
    assert loaded.ready_file == str(cert_dir.parent / "ready.json")
    # A flag or variable is still relative to the working directory, as for any command.
    flagged = load_config(AgentConfig, path=str(config), env={}, flags={"ready_file": "r.json"})
    assert flagged.ready_file == "r.json"


def test_without_config_the_default_file_is_read(
    cert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert default_config_file(AgentConfig) == tmp_path / "fluidity" / "agent.yaml"
    default = tmp_path / "fluidity" / "agent.yaml"
    default.parent.mkdir()
    default.write_text(f"listen_port: 9123\nca_cert: {cert_dir / 'ca.pem'}\n")
    loaded = load_config(
        AgentConfig,
        env={},
        flags={
            "client_cert": str(cert_dir / "client.pem"),
            "client_key": str(cert_dir / "client-key.pem"),
        },
    )
    assert loaded.listen_port == 9123
    # FLUIDITY_CONFIG (or --config) wins: the default is not read then.
    other = tmp_path / "other.yaml"
    other.write_text(f"ca_cert: {cert_dir / 'ca.pem'}\n")
    env = {"FLUIDITY_CONFIG": str(other)}
    flags = {"client_cert": str(cert_dir / "client.pem"),
             "client_key": str(cert_dir / "client-key.pem")}  # fmt: skip
    assert load_config(AgentConfig, env=env, flags=flags).listen_port == 8080
