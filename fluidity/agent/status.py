"""What the agent is doing, for people: the status page at its own address and `fluidity
status`.

Both read the /healthz JSON (`app.health`) and say it in the same lines (`summary`): the
tunnel's state, the server's address and state, a wake's progress, and the last failure with
its hint. A browser pointed at the agent gets them as a small HTML page that reloads itself
while the tunnel is not up; `fluidity status` prints them, adding what the control plane says.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from typing import Any

import attrs
import click
import httpx2
import trio

from fluidity.startup import host_port

__all__ = ["page", "status_command", "summary"]

#: How often the page reloads while the tunnel is not up (a wake takes about a minute).
REFRESH_SECONDS = 2

_STATES = {
    "up": "up: requests go through the tunnel",
    "connecting": "connecting to the server",
    "down": "down: the server cannot be reached (retrying)",
    "waking": "waking the server (the first request waits for it)",
    "asleep": "the server is asleep; the next request wakes it",
    "stopping": "shutting down",
    "stopped": "stopped",
}


def summary(health: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The agent's state as (label, text) lines."""
    state = str(health.get("tunnel", "unknown"))
    lines = [("tunnel", _STATES.get(state, state)), ("server", str(health.get("server", "?")))]
    if "server_state" in health:
        lines.append(("server state", f"{health['server_state']} (control plane)"))
    wake = health.get("wake")
    if isinstance(wake, Mapping):
        text = f"{wake.get('elapsed_seconds', 0)} s so far"
        if wake.get("estimated_seconds"):
            text += f", about {wake['estimated_seconds']} s in all"
        if wake.get("task_status"):
            text += f", task {wake['task_status']}"
        lines.append(("wake", text))
    if "up_seconds" in health:
        rtt = health.get("rtt_ms")
        lines.append(("link", f"up {health['up_seconds']} s" + (f", rtt {rtt} ms" if rtt else "")))
    lines.append(("requests", f"{health.get('active_requests', 0)} open"))
    failure = health.get("failure")
    if isinstance(failure, Mapping):
        kind = "configuration mistake" if failure.get("permanent") else "transient"
        lines.append(("last error", f"{failure.get('message')} ({kind})"))
        if failure.get("hint"):
            lines.append(("hint", str(failure["hint"])))
    elif health.get("last_error"):
        lines.append(("last error", str(health["last_error"])))
    return lines


def page(health: Mapping[str, Any], proxy: str) -> str:
    """The HTML status page; `proxy` is the agent's own address (http://host:port)."""
    up = health.get("tunnel") == "up"
    refresh = "" if up else f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
    rows = "".join(
        f"<tr><th>{html.escape(label)}</th><td>{html.escape(text)}</td></tr>"
        for label, text in summary(health)
    )
    p = html.escape(proxy)
    return (
        '<!doctype html><html><head><meta charset="utf-8">'
        f"<title>Fluidity: {html.escape(str(health.get('tunnel', '')))}</title>{refresh}"
        "<style>body{font-family:sans-serif;max-width:46em;margin:2em auto}"
        "th{text-align:left;padding-right:1em;vertical-align:top}</style></head><body>"
        f"<h1>Fluidity agent</h1><table>{rows}</table>"
        f"<p>This is an HTTP proxy: set <code>{p}</code> as your browser's HTTP and HTTPS "
        f"proxy, or <code>curl -x {p} https://example.com</code>. "
        f'JSON: <a href="/healthz">/healthz</a>.</p></body></html>\n'
    )


# -- `fluidity status` ----------------------------------------------------------------------


def _agent_url(config: Any) -> str:
    host = config.listen_host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1" if host != "::" else "::1"
    return f"http://{host_port(host, config.listen_port)}"


async def _gather(config: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"agent_url": _agent_url(config)}
    headers = {}
    if config.proxy_auth:
        import base64

        headers["proxy-authorization"] = "Basic " + base64.b64encode(
            config.proxy_auth.encode()
        ).decode("ascii")
    try:
        with trio.fail_after(5):
            async with httpx2.AsyncClient(trust_env=False, timeout=5) as http:
                response = await http.get(f"{out['agent_url']}/healthz", headers=headers)
        out["agent"] = response.json()
    except (httpx2.HTTPError, trio.TooSlowError, ValueError) as exc:
        out["agent_error"] = f"no agent answers at {out['agent_url']} ({type(exc).__name__})"
    if config.api_url and config.api_key:
        from .lifecycle import ControlPlane, ControlPlaneError

        control = ControlPlane(config.api_url, config.api_key, attempts=1, call_timeout=10)
        try:
            status = await control.status()
            fields = attrs.asdict(status)
            out["control_plane"] = {k: v for k, v in fields.items() if v is not None}
        except ControlPlaneError as exc:
            out["control_plane_error"] = str(exc)
    return out


def _print(report: Mapping[str, Any]) -> None:
    if "agent" in report:
        click.echo(f"agent: {report['agent_url']}")
        for label, text in summary(report["agent"]):
            click.echo(f"  {label + ':':<14}{text}")
    else:
        click.echo(f"agent: not running: {report['agent_error']}")
    plane = report.get("control_plane")
    if plane is not None:
        where = ""
        if plane.get("address"):
            port = plane.get("port")
            where = f" at {host_port(plane['address'], port) if port else plane['address']}"
        task = f", task {plane['task_status']}" if plane.get("task_status") else ""
        click.echo(f"server (control plane): {plane['state']}{where}{task}")
    elif "control_plane_error" in report:
        click.echo(f"server (control plane): unknown: {report['control_plane_error']}")
    else:
        click.echo("server (control plane): none configured (no api_url)")


@click.command("status")
@click.option(
    "--config",
    type=click.Path(dir_okay=False),
    help="The agent's config file (else $FLUIDITY_CONFIG, else the default one).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def status_command(config: str | None, as_json: bool) -> None:
    """Show the agent's state (from its /healthz) and the server's (from the control plane).

    Exits 0 when the agent answers, 1 when it does not.
    """
    import os

    from fluidity.settings import load_config

    from .settings import AgentConfig

    settings = load_config(AgentConfig, path=config, env=os.environ)
    report = trio.run(_gather, settings)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        _print(report)
    raise SystemExit(0 if "agent" in report else 1)
