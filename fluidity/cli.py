"""The ``fluidity`` command: the tools around the agent and the server.

Certificates (`certs`), the agent's state (`status`) and service (`agent install`), the
local cloud (`local up`), and the AWS deployment (`deploy`, `destroy`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from fluidity import __version__, certs
from fluidity.settings import default_config_dir

F = TypeVar("F", bound=Callable[..., Any])

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, prog_name="fluidity")
def main() -> None:
    """Fluidity: a personal HTTP tunnel. Run the agent with `fluidity-agent`, the server with
    `fluidity-server`; this command holds the tools around them."""


@main.group("certs")
def certs_group() -> None:
    """Make the private CA and the certificates of the agent-server link."""


def _dir_option(help: str) -> Callable[[F], F]:
    return click.option(
        "--dir",
        "directory",
        required=True,
        type=click.Path(file_okay=False, path_type=Path),
        help=help,
    )


def _days_option(help: str) -> Callable[[F], F]:
    return click.option(
        "--days",
        type=click.IntRange(1, 36500),
        default=certs.DEFAULT_DAYS,
        show_default=True,
        help=help,
    )


_FORCE = click.option("--force", is_flag=True, help="Overwrite existing files.")


@certs_group.command("init")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for the certificate files (created with mode 0700 if missing). "
    "[default: certs/ in the config directory, which also gets agent.yaml and server.yaml]",
)
@click.option(
    "--server-name",
    default=certs.DEFAULT_SERVER_NAME,
    show_default=True,
    help="Name in the server certificate; the agent's server_name setting must match it.",
)
@click.option(
    "--san",
    "sans",
    multiple=True,
    metavar="NAME|IP",
    help="Extra DNS name or IP address for the server certificate (repeatable).",
)
@click.option(
    "--client-name",
    default=certs.DEFAULT_CLIENT_NAME,
    show_default=True,
    help="Common name of the first client certificate.",
)
@_days_option("Validity of the server and client certificates, in days.")
@_FORCE
def certs_init(
    directory: Path | None,
    server_name: str,
    sans: Sequence[str],
    client_name: str,
    days: int,
    force: bool,
) -> None:
    """Create a CA, a server certificate and a client certificate in --dir.

    The server certificate names --server-name instead of an address, because the server's IP
    address changes every time it starts; the agent checks that name. Without --dir, the files
    go to the config directory with an agent.yaml and a server.yaml that use them, so that
    `fluidity-server` and `fluidity-agent` start with no flags.
    """
    config_dir = default_config_dir() if directory is None else None
    if directory is None:
        directory = default_config_dir() / "certs"
    try:
        files = certs.init_dir(
            directory,
            server_name=server_name,
            sans=sans,
            client_name=client_name,
            days=days,
            force=force,
        )
    except certs.CertsError as exc:
        raise click.ClickException(str(exc)) from None
    d = directory
    _report(files)
    if config_dir is not None:
        _write_configs(config_dir, server_name)
        click.echo(
            "\nNext steps:\n"
            f"  - keep {d / certs.CA_KEY} private and offline; it is only needed by "
            "`fluidity certs client`.\n"
            "  - on this machine: `fluidity-server`, then `fluidity-agent` (each reads its file "
            f"in {config_dir}); then `curl -x http://127.0.0.1:8080 https://example.com`.\n"
            "  - with the server elsewhere: copy server.yaml and the certs/ files it names (not "
            "ca-key.pem) there, and set server_host in agent.yaml. docs/certificates.md says more."
        )
        return
    click.echo(
        "\nNext steps:\n"
        f"  - keep {d / certs.CA_KEY} private and offline; it is only needed by "
        "`fluidity certs client`.\n"
        f"  - agent: ca_cert={d / certs.CA_CERT} client_cert={d / certs.CLIENT_CERT} "
        f"client_key={d / certs.CLIENT_KEY} server_name={server_name}\n"
        f"  - server: ca_cert={d / certs.CA_CERT} server_cert={d / certs.SERVER_CERT} "
        f"server_key={d / certs.SERVER_KEY}\n"
        "    (paths, or the PEM text itself, e.g. "
        f'FLUIDITY_SERVER_KEY="$(cat {d / certs.SERVER_KEY})")\n'
        "  - see configs/agent.yaml and configs/server.yaml, and docs/certificates.md."
    )


@certs_group.command("client")
@click.argument("name")
@_dir_option("Directory holding the CA (ca.pem, ca-key.pem); the new files go there too.")
@_days_option("Validity of the certificate, in days (never beyond the CA's).")
@_FORCE
def certs_client(name: str, directory: Path, days: int, force: bool) -> None:
    """Issue another client certificate NAME, signed by the CA in --dir.

    Writes client-NAME.pem and client-NAME-key.pem next to the CA.
    """
    try:
        files = certs.add_client(directory, name, days=days, force=force)
    except certs.CertsError as exc:
        raise click.ClickException(str(exc)) from None
    _report(files)
    click.echo(
        f"\nNext step: give that agent client_cert={files[0]} client_key={files[1]} "
        f"and ca_cert={directory / certs.CA_CERT}."
    )


_CONFIGS = {
    "agent.yaml": (
        "# The agent's settings, written by `fluidity certs init`; every setting is in\n"
        "# docs/configuration.md. Relative paths are relative to this file.\n"
        "ca_cert: certs/{ca}\nclient_cert: certs/{client}\nclient_key: certs/{client_key}\n"
        "server_name: {server_name}\n"
        "# Where the server runs (this machine by default):\nserver_host: 127.0.0.1\n"
    ),
    "server.yaml": (
        "# The server's settings, written by `fluidity certs init`; every setting is in\n"
        "# docs/configuration.md. Relative paths are relative to this file.\n"
        "ca_cert: certs/{ca}\nserver_cert: certs/{server}\nserver_key: certs/{server_key}\n"
    ),
}


def _write_configs(config_dir: Path, server_name: str) -> None:
    """agent.yaml and server.yaml naming the certificates in config_dir/certs; an existing
    file is the user's and is kept."""
    values = {
        "ca": certs.CA_CERT,
        "client": certs.CLIENT_CERT,
        "client_key": certs.CLIENT_KEY,
        "server": certs.SERVER_CERT,
        "server_key": certs.SERVER_KEY,
        "server_name": server_name,
    }
    for name, template in _CONFIGS.items():
        path = config_dir / name
        if path.exists():
            click.echo(f"  {path}  (exists, kept: check that it names these certificates)")
            continue
        path.write_text(template.format(**values))
        click.echo(f"  {path}")


def _report(files: Sequence[Path]) -> None:
    click.echo("Wrote:")
    for path in files:
        mode = path.stat().st_mode & 0o777
        click.echo(f"  {path}  (mode {mode:04o})")


def _cidrs(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    import ipaddress

    for value in values:
        try:
            ipaddress.ip_network(value, strict=True)
        except ValueError:
            raise click.BadParameter(
                f"{value!r} is not a CIDR block (e.g. 127.0.0.1/32 or 127.0.0.0/8)"
            ) from None
    return values


@main.group("local")
def local_group() -> None:
    """Run Fluidity on this machine."""


@local_group.command("up")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8080, show_default=True,
    help="Port of the local proxy on 127.0.0.1.",
)  # fmt: skip
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".fluidity"),
    show_default=True,
    help="Where certificates, the Lambda zip and logs are kept.",
)
@click.option(
    "--time-scale", type=click.FloatRange(min=1), default=60.0, show_default=True,
    help="Schedule seconds per real second: 60 runs the 15-minute idle threshold in 15 s.",
)  # fmt: skip
@click.option(
    "--start-delay", type=click.FloatRange(min=0), default=2.0, show_default=True,
    help="Seconds the Fargate stand-in takes to start a server (a cold start).",
)  # fmt: skip
@click.option(
    "--api-port", type=click.IntRange(0, 65535), default=0, show_default=True,
    help="Port of the API Gateway stand-in on 127.0.0.1 (0: a free one).",
)  # fmt: skip
@click.option(
    "--server-port", type=click.IntRange(0, 65535), default=0, show_default=True,
    help="Port of the server's TLS listener on 127.0.0.1 (0: a free one).",
)  # fmt: skip
@click.option(
    "--aws-port", type=click.IntRange(0, 65535), default=0, show_default=True,
    help="Port of moto (the AWS APIs) on 127.0.0.1 (0: a free one).",
)  # fmt: skip
@click.option(
    "--egress-allow",
    multiple=True,
    metavar="CIDR",
    callback=_cidrs,
    help="Let the server reach these addresses, refused by default (repeatable): "
    "127.0.0.1/32 lets you try it against a local origin without internet.",
)
@click.option(
    "--log-level", type=click.Choice(["info", "debug"]), default="info", show_default=True,
    help="info: the lifecycle only; debug: also every AWS and API call.",
)  # fmt: skip
def local_up(
    port: int,
    state_dir: Path,
    time_scale: float,
    start_delay: float,
    api_port: int,
    server_port: int,
    aws_port: int,
    egress_allow: tuple[str, ...],
    log_level: str,
) -> None:
    """Start the local cloud (moto, API Gateway, scheduler and Fargate stand-ins) and an agent
    using it; Ctrl-C stops everything."""
    try:
        import moto  # noqa: F401
    except ImportError:
        raise click.ClickException(
            "`fluidity local up` needs the `local` extra (moto plays AWS): "
            "pip install 'fluidity[local]' (or, in a checkout, pip install -e '.[local]')"
        ) from None
    from fluidity.localcloud import up
    from fluidity.localcloud.cloud import CloudSettings

    settings = CloudSettings(
        time_scale=time_scale,
        start_delay=start_delay,
        aws_port=aws_port,
        api_port=api_port,
        server_port=server_port,
        server_env={"FLUIDITY_EGRESS_ALLOW": ",".join(egress_allow)} if egress_allow else {},
    )
    raise SystemExit(up.run(state_dir, port, settings, log_level=log_level))


# -- the agent's state and service (fluidity/agent/status.py, service.py) ----------------------
from fluidity.agent.service import agent_group  # noqa: E402
from fluidity.agent.status import status_command  # noqa: E402

main.add_command(status_command)
main.add_command(agent_group)

# -- AWS deployment (fluidity/deploy/) -----------------------------------------------------------
from fluidity.deploy.commands import deploy_command, destroy_command  # noqa: E402

main.add_command(deploy_command)
main.add_command(destroy_command)
