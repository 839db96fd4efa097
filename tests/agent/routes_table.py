"""Rules and the decisions they must give, shared by the routing and PAC tests."""

from __future__ import annotations

from fluidity.agent.routing import Action

RULES = (
    "block ads.corp.example",
    "direct .corp.example intranet 10.0.0.0/8 fd00::/8 192.168.1.7",
    "tunnel .example.com",
    "block 127.0.0.0/8",
)

#: (destination as a client gives it, action, number of the deciding rule or None).
TABLE = [
    ("ads.corp.example", Action.BLOCK, 1),  # the earlier rule wins over the domain below
    ("ADS.Corp.Example.", Action.BLOCK, 1),  # case and a final dot do not matter
    ("x.ads.corp.example", Action.DIRECT, 2),  # an exact host does not cover names under it
    ("corp.example", Action.DIRECT, 2),  # a domain covers itself...
    ("wiki.corp.example", Action.DIRECT, 2),  # ...and every name under it
    ("a.b.corp.example", Action.DIRECT, 2),
    ("notcorp.example", Action.DIRECT, None),  # not a label boundary: the default (direct)
    ("corp.example.org", Action.DIRECT, None),
    ("intranet", Action.DIRECT, 2),
    ("intranet.corp.example", Action.DIRECT, 2),
    ("10.1.2.3", Action.DIRECT, 2),
    ("11.0.0.1", Action.DIRECT, None),
    ("192.168.1.7", Action.DIRECT, 2),
    ("192.168.1.8", Action.DIRECT, None),
    ("fd12::1", Action.DIRECT, 2),
    ("[fd12::1]", Action.DIRECT, 2),
    ("fe80::1", Action.DIRECT, None),
    ("::ffff:10.9.9.9", Action.DIRECT, 2),  # an IPv4-mapped address is the IPv4 one
    ("www.example.com", Action.TUNNEL, 3),
    ("127.0.0.1", Action.BLOCK, 4),
    ("localhost", Action.DIRECT, None),  # a name is never resolved to match an address rule
]
