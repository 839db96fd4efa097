"""The agent's proxy auto-config (PAC) file, written from its routing rules.

A browser that loads ``http://127.0.0.1:8080/proxy.pac`` sends `direct` traffic itself and
everything else to the agent: `tunnel` traffic as usual, and `block` traffic too, so that the
agent answers it with its 403 naming the rule (a PAC file can only say where to send a
request, not refuse it). There is no ``DIRECT`` fallback after the agent: when the agent is
down, tunnelled traffic must fail, not leave by the local network.

The script decides exactly as `Routes.decide` does (a test runs it in a JavaScript engine
against the rules): the first rule that matches wins, names match exact hosts and domains,
addresses match IP blocks, and no name is resolved (``dnsResolve``/``isInNet`` would block the
browser on DNS and match what the agent never matches).
"""

from __future__ import annotations

import ipaddress
import json

from .routing import Action, IPNetwork, Routes

__all__ = ["CONTENT_TYPE", "pac_file"]

CONTENT_TYPE = b"application/x-ns-proxy-autoconfig"

#: The decision in JavaScript: the same normalization and the same matching as `routing`.
_FUNCTIONS = r"""
function fluidityGroups4(text) {
  var parts = text.split(".");
  if (parts.length != 4) return null;
  var b = [];
  for (var i = 0; i < 4; i++) {
    if (!/^(0|[1-9][0-9]{0,2})$/.test(parts[i])) return null;
    var n = parseInt(parts[i], 10);
    if (n > 255) return null;
    b.push(n);
  }
  return [b[0] * 256 + b[1], b[2] * 256 + b[3]];
}

function fluidityHex(parts) {
  var out = [];
  for (var i = 0; i < parts.length; i++) {
    if (!/^[0-9a-f]{1,4}$/.test(parts[i])) return null;
    out.push(parseInt(parts[i], 16));
  }
  return out;
}

function fluidityGroups6(text) {
  var zone = text.indexOf("%");
  if (zone >= 0) text = text.substring(0, zone);
  var last = text.lastIndexOf(":");
  if (last >= 0 && text.indexOf(".", last) > last) {
    var v4 = fluidityGroups4(text.substring(last + 1));
    if (!v4) return null;
    text = text.substring(0, last + 1) + v4[0].toString(16) + ":" + v4[1].toString(16);
  }
  var halves = text.split("::");
  if (halves.length > 2) return null;
  var head = fluidityHex(halves[0] ? halves[0].split(":") : []);
  if (!head) return null;
  if (halves.length == 1) return head.length == 8 ? head : null;
  var tail = fluidityHex(halves[1] ? halves[1].split(":") : []);
  if (!tail) return null;
  var fill = 8 - head.length - tail.length;
  if (fill < 1) return null;
  while (fill-- > 0) head.push(0);
  return head.concat(tail);
}

// [4, two 16-bit groups] or [6, eight], or null for a name.
function fluidityAddress(host) {
  var v4 = fluidityGroups4(host);
  if (v4) return [4, v4];
  if (host.indexOf(":") < 0) return null;
  var v6 = fluidityGroups6(host);
  if (!v6) return null;
  if (v6[0] == 0 && v6[1] == 0 && v6[2] == 0 && v6[3] == 0 && v6[4] == 0 && v6[5] == 65535) {
    return [4, [v6[6], v6[7]]];  // IPv4-mapped: the IPv4 address
  }
  return [6, v6];
}

function fluidityInNet(address, net) {
  if (address[0] != net[0]) return false;
  var groups = address[1], base = net[1], bits = net[2];
  for (var i = 0; i < base.length && bits > 0; i++, bits -= 16) {
    var keep = Math.pow(2, 16 - Math.min(bits, 16));
    if (Math.floor(groups[i] / keep) != Math.floor(base[i] / keep)) return false;
  }
  return true;
}

function fluidityMatches(rule, host, address) {
  var i;
  if (address) {
    for (i = 0; i < rule.networks.length; i++) {
      if (fluidityInNet(address, rule.networks[i])) return true;
    }
    return false;
  }
  for (i = 0; i < rule.hosts.length; i++) {
    if (host == rule.hosts[i]) return true;
  }
  for (i = 0; i < rule.domains.length; i++) {
    var d = rule.domains[i];
    if (host == d) return true;
    if (host.length > d.length + 1 && host.substring(host.length - d.length - 1) == "." + d) {
      return true;
    }
  }
  return false;
}

function FindProxyForURL(url, host) {
  host = host.replace(/^\s+|\s+$/g, "").toLowerCase();
  while (host.charAt(host.length - 1) == ".") host = host.substring(0, host.length - 1);
  if (host.charAt(0) == "[" && host.charAt(host.length - 1) == "]") {
    host = host.substring(1, host.length - 1);
  }
  var address = fluidityAddress(host);
  for (var i = 0; i < RULES.length; i++) {
    if (fluidityMatches(RULES[i], host, address)) return RULES[i].route;
  }
  return DEFAULT_ROUTE;
}
"""


def _groups(net: IPNetwork) -> list[int]:
    packed = net.network_address.packed
    return [int.from_bytes(packed[i : i + 2], "big") for i in range(0, len(packed), 2)]


def proxy_address(host: str, port: int) -> str:
    """host:port as a PAC file names a proxy (an IPv6 address in brackets)."""
    try:
        if isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address):
            return f"[{host}]:{port}"
    except ValueError:
        pass
    return f"{host}:{port}"


def pac_file(routes: Routes, proxy: str) -> str:
    """The PAC script for `routes`, sending tunnelled and blocked traffic to `proxy`
    (``host:port``, the agent's address as the browser reaches it)."""
    target = {
        Action.DIRECT: "DIRECT",
        Action.TUNNEL: f"PROXY {proxy}",
        # A PAC file cannot refuse: the agent does, with a 403 that names the rule.
        Action.BLOCK: f"PROXY {proxy}",
    }
    lines = [
        "// Proxy auto-config from the Fluidity agent's routes (served at /proxy.pac).",
        "// The first rule that matches decides; other hosts get the default route.",
        "// Address rules match hosts given as addresses; no name is resolved.",
        "var RULES = [",
    ]
    for rule in routes.rules:
        entry = {
            "route": target[rule.action],
            "hosts": sorted(rule.hosts),
            "domains": list(rule.domains),
            "networks": [[n.version, _groups(n), n.prefixlen] for n in rule.networks],
        }
        lines.append(f"  // {rule.describe()}")
        lines.append(f"  {json.dumps(entry)},")
    lines.append("];")
    lines.append(f"// the default route ({routes.default.value})")
    lines.append(f"var DEFAULT_ROUTE = {json.dumps(target[routes.default])};")
    return "\n".join(lines) + "\n" + _FUNCTIONS
