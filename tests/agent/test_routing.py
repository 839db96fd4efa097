"""Routing rules on their own: what each pattern matches, first match wins, the default, and
the errors that name the entry at fault."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from fluidity.agent.routing import Action, Routes, check_routes

from .routes_table import RULES, TABLE


@pytest.mark.parametrize(("host", "action", "number"), TABLE)
def test_first_matching_rule_decides(host: str, action: Action, number: int | None) -> None:
    routes = Routes.parse(RULES, "direct")
    decision = routes.decide(host)
    assert decision.action is action
    assert (decision.rule.number if decision.rule else None) == number


def test_no_rules_route_everything_the_default_way() -> None:
    assert Routes().decide("anything.example").action is Action.TUNNEL
    assert Routes.parse((), "block").decide("10.0.0.1").action is Action.BLOCK
    assert not Routes().uses_direct
    assert Routes.parse((), "direct").uses_direct
    assert Routes.parse(("direct intranet",)).uses_direct


def test_describe_names_the_rule_as_written() -> None:
    routes = Routes.parse(("Block  ads.example   tracker.example",))
    assert routes.decide("ads.example").describe() == "rule 1 (block ads.example tracker.example)"
    assert routes.decide("other.example").describe() == "the default route (tunnel)"
    assert check_routes(("Block  ads.example",)) == ("block ads.example",)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("", "entry 1 ('') is empty"),
        ("allow .corp.example", "starts with 'allow': expected an action, one of tunnel, direct"),
        ("direct", "names no destination"),
        ("direct *.corp.example", "write '.corp.example' rather than '*.corp.example'"),
        ("block http://ads.example/", "'http://ads.example/' is not a pattern"),
        ("block 10.0.0.0/33", "'10.0.0.0/33' is not a pattern"),
        ("block 1.2.3", "'1.2.3' is not a pattern"),
    ],
)
def test_bad_entries_name_the_entry_and_what_is_expected(entry: str, message: str) -> None:
    with pytest.raises(ValueError, match="entry 1") as info:
        Routes.parse((entry,))
    assert message in str(info.value)


def test_a_bad_default_is_refused() -> None:
    with pytest.raises(ValueError, match="expected one of tunnel, direct, block"):
        Routes.parse((), "proxy")


def test_the_example_in_docs_routing_decides_as_the_page_says() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "routing.md").read_text()
    block = re.search(r"```yaml\n(.*?)```", text, re.DOTALL)
    assert block is not None
    config = yaml.safe_load(block.group(1))
    routes = Routes.parse(config["routes"], config["default_route"])
    assert routes.decide("vpn.corp.example").action is Action.TUNNEL
    assert routes.decide("wiki.corp.example").action is Action.DIRECT
    blocked = routes.decide("ads.example")
    assert f"`ads.example is blocked by the agent's\n{blocked.describe()}`" in text
