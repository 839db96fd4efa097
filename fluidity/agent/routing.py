"""Routing rules: which destinations go through the tunnel, straight from the agent, or nowhere.

Sans-I/O: `Routes.parse` reads the `routes` setting, `Routes.decide(host)` answers for one
destination. The rules are ordered and the first match decides; a host no rule matches gets
the default. The same rules, written as JavaScript, make the agent's PAC file (`pac`), so a
browser and the agent decide alike.

A pattern is an exact host (``intranet.example``), a domain with every name under it
(``.corp.example``), or an IP address or CIDR block (``10.0.0.0/8``, ``fd00::/8``). Address
patterns match destinations given as addresses only: the agent never resolves a name to route
it (the server resolves tunnelled names, and a browser's PAC file would have to block on DNS).
"""

from __future__ import annotations

import enum
import ipaddress
import re

import attrs

__all__ = ["Action", "Decision", "Routes", "Rule", "normalize_host"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: What a host name pattern may hold: DNS labels (underscores too: they occur in real names).
_LABEL = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
_NAME = re.compile(rf"{_LABEL}(\.{_LABEL})*")
_PATTERN_HELP = (
    "an exact host (intranet.example), a domain and every name under it (.corp.example), "
    "or an IP address or CIDR block (10.0.0.0/8)"
)


class Action(enum.Enum):
    """Where matching traffic goes."""

    #: Through the link to the server, as all traffic goes without rules.
    TUNNEL = "tunnel"
    #: The agent connects to the destination itself; the server is not involved (or woken).
    DIRECT = "direct"
    #: Refused by the agent (HTTP 403, SOCKS "not allowed by ruleset") naming the rule.
    BLOCK = "block"


ACTIONS = tuple(a.value for a in Action)


@attrs.frozen
class Rule:
    """One entry of `routes`."""

    #: Its place in `routes`, from 1 (what messages and the PAC file call it).
    number: int
    action: Action
    #: Names matched exactly (lower case, no final dot).
    hosts: frozenset[str]
    #: Domains matched with every name under them.
    domains: tuple[str, ...]
    networks: tuple[IPNetwork, ...]
    #: The entry as configured, normalized (one space between words).
    text: str

    def matches(self, host: str, address: IPAddress | None) -> bool:
        if address is not None:
            return any(address in net for net in self.networks)
        if host in self.hosts:
            return True
        return any(host == d or host.endswith("." + d) for d in self.domains)

    def describe(self) -> str:
        return f"rule {self.number} ({self.text})"


@attrs.frozen
class Decision:
    """What `Routes.decide` answers: the action, and the rule that chose it (None: default)."""

    action: Action
    rule: Rule | None = None

    def describe(self) -> str:
        if self.rule is None:
            return f"the default route ({self.action.value})"
        return self.rule.describe()


def normalize_host(host: str) -> tuple[str, IPAddress | None]:
    """A destination as rules compare it: lower case, no final dot, no IPv6 brackets or zone;
    and its address, if it is one (an IPv4-mapped IPv6 address counts as the IPv4 one)."""
    name = host.strip().lower().rstrip(".")
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if not (name[:1].isdigit() or ":" in name):
        return name, None  # a name: no address starts otherwise (and no exception to pay)
    try:
        address = ipaddress.ip_address(name.partition("%")[0])
    except ValueError:
        return name, None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return name, address


def _parse_rule(number: int, entry: str) -> Rule:
    words = entry.split()
    where = f"entry {number} ({entry.strip()!r})"
    if not words:
        raise ValueError(f"{where} is empty; write ACTION PATTERN..., e.g. 'direct .corp.example'")
    try:
        action = Action(words[0].lower())
    except ValueError:
        raise ValueError(
            f"{where} starts with {words[0]!r}: expected an action, one of {', '.join(ACTIONS)}"
        ) from None
    if len(words) == 1:
        raise ValueError(f"{where} names no destination; add patterns: {_PATTERN_HELP}")
    hosts: set[str] = set()
    domains: list[str] = []
    networks: list[IPNetwork] = []
    for word in words[1:]:
        pattern = word.lower().rstrip(".")
        if pattern.startswith("*."):
            raise ValueError(
                f"{where}: write {pattern[1:]!r} rather than {word!r} (a leading dot matches "
                "the domain and every name under it)"
            )
        try:
            networks.append(ipaddress.ip_network(pattern.strip("[]"), strict=False))
            continue
        except ValueError:
            pass
        if pattern.startswith(".") and _NAME.fullmatch(pattern[1:]):
            domains.append(pattern[1:])
        elif _NAME.fullmatch(pattern) and not pattern.replace(".", "").isdigit():
            hosts.add(pattern)
        else:
            raise ValueError(f"{where}: {word!r} is not a pattern; expected {_PATTERN_HELP}")
    text = " ".join([action.value, *words[1:]])
    return Rule(number, action, frozenset(hosts), tuple(domains), tuple(networks), text)


@attrs.frozen
class Routes:
    """The ordered rules and the default; `decide` is called for every proxied connection."""

    rules: tuple[Rule, ...] = ()
    default: Action = Action.TUNNEL

    @classmethod
    def parse(cls, entries: tuple[str, ...] | list[str], default: str = "tunnel") -> Routes:
        """Read the `routes` setting; ValueError names the entry at fault and what it expects."""
        try:
            action = Action(default)
        except ValueError:
            expected = ", ".join(ACTIONS)
            raise ValueError(f"default route {default!r}: expected one of {expected}") from None
        return cls(tuple(_parse_rule(i, e) for i, e in enumerate(entries, 1)), action)

    @property
    def uses_direct(self) -> bool:
        """Whether any traffic can go direct (the agent then runs its direct link)."""
        return self.default is Action.DIRECT or any(r.action is Action.DIRECT for r in self.rules)

    def decide(self, host: str) -> Decision:
        """The route for `host` (a name or an address, as the client gave it)."""
        if not self.rules:
            return _DEFAULTS[self.default]
        name, address = normalize_host(host)
        for rule in self.rules:
            if rule.matches(name, address):
                return Decision(rule.action, rule)
        return _DEFAULTS[self.default]


_DEFAULTS = {action: Decision(action) for action in Action}


def check_routes(entries: tuple[str, ...]) -> tuple[str, ...]:
    """The `routes` setting's check: every entry parses; kept as written, normalized."""
    return tuple(rule.text for rule in Routes.parse(entries).rules)
