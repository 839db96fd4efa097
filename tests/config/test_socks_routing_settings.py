"""The SOCKS and routing settings through the loader: YAML, environment and flags, and the
errors that name the setting and the entry at fault."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from fluidity.agent.routing import Action, Routes
from fluidity.settings import ConfigError
from tests.config.test_config import assert_names_setting, load_agent

WriteYaml = Callable[[object], str]


def test_routes_from_yaml_environment_and_flags(
    agent_certs: dict[str, str], write_yaml: WriteYaml
) -> None:
    path = write_yaml(
        {**agent_certs, "routes": ["direct .corp.example  10.0.0.0/8", "block ads.example"]}
    )
    from_yaml = load_agent(path=path)
    assert from_yaml.routes == ("direct .corp.example 10.0.0.0/8", "block ads.example")
    from_env = load_agent(
        env={"FLUIDITY_ROUTES": "direct .corp.example 10.0.0.0/8,block ads.example"},
        flags=agent_certs,
    )
    assert from_env.routes == from_yaml.routes
    from_flags = load_agent(
        flags={**agent_certs, "routes": ["direct intranet", "block ads.example"],
               "default_route": "direct"},
    )  # fmt: skip
    routes = Routes.parse(from_flags.routes, from_flags.default_route)
    assert routes.decide("intranet").action is Action.DIRECT
    assert routes.decide("ads.example").action is Action.BLOCK
    assert routes.decide("elsewhere.example").action is Action.DIRECT


def test_a_bad_rule_names_the_setting_and_the_entry(agent_certs: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_agent(env={"FLUIDITY_ROUTES": "direct intranet,allow ads.example"}, flags=agent_certs)
    message = str(info.value)
    assert "invalid routes in environment variable FLUIDITY_ROUTES" in message
    assert "entry 2 ('allow ads.example') starts with 'allow'" in message
    assert_names_setting(message, "routes")


def test_default_route_choices(agent_certs: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="expected one of tunnel, direct, block"):
        load_agent(flags={**agent_certs, "default_route": "proxy"})


def test_socks_port_is_off_by_default(agent_certs: dict[str, str]) -> None:
    assert load_agent(flags=agent_certs).socks_port is None
    assert load_agent(env={"FLUIDITY_SOCKS_PORT": "1080"}, flags=agent_certs).socks_port == 1080


def test_socks_port_must_differ_from_listen_port(agent_certs: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_agent(flags={**agent_certs, "listen_port": 1080, "socks_port": 1080})
    assert "socks_port and listen_port are both 1080" in str(info.value)
    assert_names_setting(str(info.value), "socks_port")
    both_free = load_agent(flags={**agent_certs, "listen_port": 0, "socks_port": 0})
    assert both_free.socks_port == 0


def test_socks_port_off_loopback_needs_proxy_auth_too(agent_certs: dict[str, str]) -> None:
    # One listen_host for both listeners: the HTTP proxy's rule covers the SOCKS one.
    with pytest.raises(ConfigError, match="proxy_auth is required"):
        load_agent(flags={**agent_certs, "listen_host": "0.0.0.0", "socks_port": 1080})
