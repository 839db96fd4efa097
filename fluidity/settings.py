"""Settings of the processes: defaults < YAML file < ``FLUIDITY_*`` environment < flags.

Each process declares its settings beside its code (`fluidity.agent.settings`,
`fluidity.server.settings`) as a frozen attrs class whose fields say their default, help,
check and whether they are secret (`setting`). This module turns such a class into a click
command and loads it, with one name used three ways: the YAML key ``listen_port``, the
environment variable ``FLUIDITY_LISTEN_PORT`` and the flag ``--listen-port``.

The layering is click's own: each setting is a `click.Option` with ``envvar``, and the YAML
file, read by the eager ``--config`` option, becomes the context's ``default_map``; click then
picks flag > environment > file > default and records which (`ParameterSource`), so an error
can name where the bad value came from. typed-settings (attrs + cattrs + click) was weighed
and not taken: its YAML loader accepts ``server-name`` for ``server_name`` and lists unknown
keys in its own words, its environment loader ignores unknown ``FLUIDITY_*`` variables, its
conversion errors come as one exception group naming a loader class rather than the variable
or file, and its click options load the file and environment when the module is imported. Each
of those would need our code around it, on top of two more dependencies. Ours is what no
library has: the messages (closest-name suggestions; the key, variable and flag of the setting
at fault; what was expected) and the checks across settings, which each process keeps in its
``check`` method.

The file is ``--config``, else ``$FLUIDITY_CONFIG``, else ``<process>.yaml`` in the default
config directory (`default_config_dir`: platformdirs' user config directory, as
`fluidity certs init` writes it) if it exists. Relative paths in a file are relative to the
file, so a process starts the same from any working directory.

The loader checks everything it can before the process starts (values, files, that each key
matches its certificate), so a mistake is one clear `ConfigError`, never a traceback from deep
inside the tunnel.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import math
import os
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar

import attrs
import click
import platformdirs
import yaml
from click.core import ParameterSource

from fluidity import __version__, tls

__all__ = [
    "ENV_CONFIG",
    "ENV_PREFIX",
    "ConfigError",
    "command",
    "default_config_dir",
    "default_config_file",
    "load_config",
    "redacted",
    "reference",
    "setting",
]

ENV_PREFIX = "FLUIDITY_"
ENV_CONFIG = "FLUIDITY_CONFIG"

#: Every process's settings class. A variable or key of one is not a typo in the other's.
PROCESSES = ("fluidity.agent.settings:AgentConfig", "fluidity.server.settings:ServerConfig")


class Settings(Protocol):
    """What a process's settings class provides besides its attrs fields."""

    def check(self) -> None:
        """Checks across settings; raise `ConfigError` naming the setting to change."""


C = TypeVar("C", bound=Settings)


class ConfigError(click.ClickException):
    """The configuration is unusable; the message names the setting and how to fix it.

    A process's command ends on it with status 2 and ``error: <message>``.
    """

    exit_code = 2

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        #: The setting at fault (its YAML key), when there is one.
        self.key = key

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {self.message}", file=file, err=True)


def setting(
    default: Any,
    help: str,
    *,
    check: Callable[[Any], Any] | None = None,
    choices: tuple[str, ...] | None = None,
    secret: str | None = None,
    metavar: str | None = None,
    converter: Callable[[Any], Any] | None = None,
) -> Any:
    """One setting: an attrs field whose metadata the loader, the flags and the docs read.

    `help` is shown by ``--help`` and in docs/configuration.md (`code` marks there); `check`
    turns a parsed value into the final one or raises ValueError saying what is expected;
    `secret` is "pem", "auth" (user:password) or "key", each masked its own way.
    """
    meta = {"help": help, "check": check, "choices": choices, "secret": secret}
    return attrs.field(default=default, converter=converter, metadata={**meta, "metavar": metavar})


# -- value checks shared by the processes (raise ValueError with what is expected) ----------

MIB = 1024 * 1024
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
PEM_HELP = " A file path or the PEM text itself."


def port(value: int) -> int:
    if not 0 <= value <= 65535:
        raise ValueError("expected a port from 0 to 65535 (0 picks a free port)")
    return value


def remote_port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise ValueError("expected a port from 1 to 65535")
    return value


def positive(value: float) -> float:
    if not value > 0:
        raise ValueError("expected a number of seconds greater than 0")
    return value


def non_negative(value: float) -> float:
    if not value >= 0:
        raise ValueError("expected a number of seconds, 0 or more")
    return value


def positive_int(value: int) -> int:
    if value < 1:
        raise ValueError("expected an integer of at least 1")
    return value


def window(value: int) -> int:
    if not 256 * 1024 <= value <= 2**31 - 1:
        raise ValueError("expected bytes from 262144 (256 KiB, the initial window) to 2**31 - 1")
    return value


def budget(value: int) -> int:
    if value < 0:
        raise ValueError("expected bytes, 0 or more (0: windows never grow)")
    return value


def host(value: str) -> str:
    value = value.strip()
    if not value or any(c.isspace() for c in value):
        raise ValueError("expected a host name or IP address")
    return value


def pem(value: str) -> str:
    try:
        tls.load_pem(value, "value")
    except tls.PEMError as exc:
        raise ValueError(str(exc).removeprefix("value: ")) from None
    return value


def url(value: str) -> str:
    value = value.strip().rstrip("/")
    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value):
        raise ValueError("expected an http:// or https:// URL, e.g. the API stage URL")
    return value


def resource_name(value: str) -> str:
    value = value.strip()
    if not re.fullmatch(r"[A-Za-z0-9_./:-]{1,255}", value):
        raise ValueError("expected a name of letters, digits and _ . / : -")
    return value


def ready_file(value: str) -> str:
    parent = Path(value).expanduser().parent
    if not parent.is_dir():
        raise ValueError(f"directory {str(parent)!r} does not exist")
    return value


# -- settings both processes define the same way --------------------------------------------

#: name: (default, help, options of `setting`). Settings whose help differs per process (what
#: the peer is, what a window holds there) stay in each process's own class.
SHARED_SETTINGS: dict[str, tuple[Any, str, dict[str, Any]]] = {
    "keepalive_interval": (
        15.0,
        "Seconds between keepalive pings on an idle link.",
        {"check": positive},
    ),
    "log_level": ("info", "Lowest level logged.", {"choices": LOG_LEVELS}),
    "log_format": (
        "text",
        "Log format: text for people, json (one object per line) for collectors.",
        {"choices": LOG_FORMATS},
    ),
    "ready_file": (
        None,
        "File to write JSON with the bound ports to once listening (for scripts and tests).",
        {"check": ready_file, "metavar": "PATH"},
    ),
}


def shared(name: str) -> Any:
    """A field for the setting `name` of SHARED_SETTINGS (attrs needs one per class)."""
    default, help, options = SHARED_SETTINGS[name]
    return setting(default, help, **options)


# -- describing settings --------------------------------------------------------------------


class _Kind:
    """The value types settings may have; each reads as the expectation in error messages."""

    STR = "a string"
    INT = "an integer"
    FLOAT = "a number"
    BOOL = "a boolean (true/false)"
    LIST = "a list of strings (comma-separated in the environment)"
    #: Only `StaticHosts` so far: names are compared as host names.
    MAP = "a mapping of names to strings (name=value,name2=value2 in the environment)"


@attrs.frozen
class _Setting:
    name: str
    kind: str
    optional: bool
    default: object
    help: str
    check: Callable[[Any], Any] | None
    choices: tuple[str, ...] | None
    secret: str | None
    metavar: str | None
    #: Builds the value of a MAP setting from (name, value) pairs.
    mapping: Callable[[Any], Any] | None

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def names(self) -> str:
        """The three ways to set it, for error messages."""
        return f"YAML key {self.name}, env {self.env}, flag {self.flag}"

    @property
    def multiple(self) -> bool:
        return self.kind in (_Kind.LIST, _Kind.MAP)

    @property
    def is_path(self) -> bool:
        """A file path (its metavar says so): relative in a config file means to the file."""
        return self.secret == "pem" or self.metavar == "PATH"


_SETTINGS: dict[type[Any], dict[str, _Setting]] = {}


def settings_of(cls: type[Any]) -> dict[str, _Setting]:
    """The settings of a settings class, in field order (computed once per class)."""
    if cls not in _SETTINGS:
        _SETTINGS[cls] = _describe(cls)
    return _SETTINGS[cls]


_KINDS = {str: _Kind.STR, int: _Kind.INT, float: _Kind.FLOAT, bool: _Kind.BOOL}


def _describe(cls: type[Any]) -> dict[str, _Setting]:
    hints = typing.get_type_hints(cls)
    out = {}
    for field in attrs.fields(cls):
        hint = hints[field.name]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = typing.get_origin(hint) in (typing.Union, types.UnionType)
        if optional:
            if len(args) != 1:
                raise TypeError(f"{cls.__name__}.{field.name}: unsupported type {hint}")
            hint = args[0]
        origin = typing.get_origin(hint) or hint
        kind = _KINDS.get(hint)
        mapping = None
        if kind is None and origin in (tuple, list):
            kind = _Kind.LIST
        elif kind is None and isinstance(origin, type) and issubclass(origin, Mapping):
            kind, mapping = _Kind.MAP, origin
        if kind is None:
            raise TypeError(f"{cls.__name__}.{field.name}: unsupported type {hint}")
        meta = field.metadata
        if "help" not in meta:
            raise TypeError(f"{cls.__name__}.{field.name} has no help text")
        out[field.name] = _Setting(
            name=field.name,
            kind=kind,
            optional=optional,
            default=field.default,
            help=str(meta["help"]),
            check=meta.get("check"),
            choices=meta.get("choices"),
            secret=meta.get("secret"),
            metavar=meta.get("metavar"),
            mapping=mapping,
        )
    return out


def label(cls: type[Any]) -> str:
    """ "agent" for AgentConfig."""
    return cls.__name__.removesuffix("Config").lower() or cls.__name__


def _others(cls: type[Any]) -> list[type[Any]]:
    """The settings classes of the other processes (imported by name: they are not ours)."""
    out = []
    for path in PROCESSES:
        module, _, attr = path.partition(":")
        other = getattr(importlib.import_module(module), attr)
        if other is not cls:
            out.append(other)
    return out


def _owner(cls: type[Any], key: str) -> type[Any] | None:
    """The other process `key` is a setting of, if any."""
    return next((o for o in _others(cls) if key in settings_of(o)), None)


# -- the command: click layers flags > environment > file > defaults -------------------------

#: What a setting that was not given at all stands as (click's default source).
_UNSET: Any = object()


def _environ(ctx: click.Context) -> Mapping[str, str]:
    """The environment the command runs with: the mapping it was given, else the process's."""
    return ctx.obj if isinstance(ctx.obj, Mapping) else os.environ


class _EnvOption(click.Option):
    """An option whose variable is read from `_environ`, raw: the setting parses it, and an
    empty value is a value (none, or an empty list), not the absence of one."""

    def value_from_envvar(self, ctx: click.Context) -> Any:
        raw = _environ(ctx).get(str(self.envvar))
        if raw is None:
            return None
        return [raw] if self.multiple else raw


class _RawBool(click.types.BoolParamType):
    """A ``--x/--no-x`` flag's type that leaves values to the setting (`_convert`)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        return value


class _SettingOption(_EnvOption):
    def __init__(self, s: _Setting, help: str) -> None:
        flag = s.kind == _Kind.BOOL
        super().__init__(
            [f"{s.flag}/--no-{s.flag[2:]}" if flag else s.flag, s.name],
            type=_RawBool() if flag else click.UNPROCESSED,
            multiple=s.multiple,
            envvar=s.env,
            metavar=s.metavar or _metavar(s),
            help=help,
            callback=_convert,
        )
        self.setting = s


def _metavar(s: _Setting) -> str:
    """What ``--help`` shows for the value, as click's own types would."""
    if s.choices:
        return "[" + "|".join(s.choices) + "]"
    return {_Kind.INT: "INTEGER", _Kind.FLOAT: "FLOAT"}.get(s.kind, "TEXT")


def _convert(ctx: click.Context, param: click.Parameter, raw: Any) -> Any:
    """Parse and check the value click picked, naming where it came from if it is bad."""
    assert isinstance(param, _SettingOption)
    s = param.setting
    source = ctx.get_parameter_source(s.name)
    if source is ParameterSource.DEFAULT_MAP:  # checked when the file was read
        return s.mapping(raw) if s.mapping is not None else raw
    if source is ParameterSource.ENVIRONMENT:
        raw = raw[0] if s.multiple else raw
        return coerce(s, raw, f"in environment variable {s.env}")
    if source is ParameterSource.COMMANDLINE:
        return coerce(s, raw, f"from flag {s.flag}")
    return _UNSET


def default_config_dir() -> Path:
    """Where `fluidity certs init` puts certificates and config files by default, and where
    the processes look for theirs: ``~/.config/fluidity`` on Linux (``$XDG_CONFIG_HOME``),
    ``~/Library/Application Support/fluidity`` on macOS (platformdirs)."""
    return Path(platformdirs.user_config_dir("fluidity", appauthor=False))


def default_config_file(cls: type[Any]) -> Path:
    """``agent.yaml`` or ``server.yaml`` in `default_config_dir`."""
    return default_config_dir() / f"{label(cls)}.yaml"


def _read_file(
    cls: type[Any], ctx: click.Context, param: click.Parameter, path: str | None
) -> None:
    """Eager ``--config``: check the environment's names, read the file into ``default_map``
    (the default file when no path is given and it exists)."""
    settings = settings_of(cls)
    for var in sorted(_environ(ctx)):
        if not var.startswith(ENV_PREFIX) or var == ENV_CONFIG:
            continue
        key = var[len(ENV_PREFIX) :].lower()
        if key not in settings and _owner(cls, key) is None:
            # one shell may start both processes: each takes its own variables
            raise _unknown(cls, key, f"environment variable {var}", env=True)
    if not path:
        default = default_config_file(cls)
        if not default.is_file():
            return
        path = str(default)
    where = f"in config file {path}"
    base = Path(path).expanduser().absolute().parent
    values = {}
    for key, raw in _read_yaml(cls, path).items():
        if settings[key].is_path and isinstance(raw, str) and "-----BEGIN" not in raw:
            # an absolute path stays as it is; normpath drops the ".." of "../certs/ca.pem"
            raw = os.path.normpath(base / Path(raw.strip()).expanduser())
        value = coerce(settings[key], raw, where)
        if isinstance(value, Mapping):
            value = tuple(value.items())  # click iterates a repeatable option's value
        if value is not None:
            values[key] = value
    ctx.default_map = values


def command(cls: type[C], run: Callable[[C], Any], doc: str) -> click.Command:
    """The click command of `cls`: ``--config`` and one option per setting; it loads the
    settings, checks them, and returns what ``run(settings)`` returns."""

    def callback(**params: Any) -> Any:
        config = cls(**{k: v for k, v in params.items() if v is not _UNSET})
        config.check()
        return run(config)

    config_option = _EnvOption(
        ["--config"],
        type=click.Path(dir_okay=False),
        envvar=ENV_CONFIG,
        is_eager=True,
        expose_value=False,
        callback=functools.partial(_read_file, cls),
        metavar="PATH",
        help=f"YAML config file (settings as keys); relative paths in it are relative to it. "
        f"[env: {ENV_CONFIG}; default: {default_config_file(cls)}, if it exists]",
    )
    options = [_SettingOption(s, _help(s)) for s in settings_of(cls).values()]
    main = click.Command(
        label(cls),
        params=[config_option, *options],
        callback=callback,
        help=doc,
        context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    )
    version: Callable[[click.Command], click.Command] = click.version_option(
        __version__, prog_name=f"fluidity-{label(cls)}"
    )
    return version(main)


def load_config(
    cls: type[C],
    *,
    path: str | None = None,
    env: Mapping[str, str],
    flags: Mapping[str, object] | None = None,
) -> C:
    """Load `cls` as its command would, outside a command line.

    The file is `path`, else ``$FLUIDITY_CONFIG`` in `env`, else none; `flags` are values as
    they would be given on the command line (None: not given). Any problem raises
    `ConfigError`.
    """
    args = ["--config", path] if path is not None else []
    settings = settings_of(cls)
    for key, value in (flags or {}).items():
        if key not in settings:
            raise ConfigError(f"unknown flag {key!r} for the {label(cls)}", key=key)
        s = settings[key]
        if value is None:
            continue
        if isinstance(value, bool):
            args.append(s.flag if value else f"--no-{s.flag[2:]}")
        elif isinstance(value, list | tuple):
            args += [a for item in value for a in (s.flag, str(item))]
        else:
            args += [s.flag, str(value)]
    main = command(cls, lambda config: config, "")
    result: C = main.main(args, label(cls), standalone_mode=False, obj=env)
    return result


# -- reading the file -----------------------------------------------------------------------


def _read_yaml(cls: type[Any], path: str) -> dict[str, object]:
    where = f"config file {path}"
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{where} does not exist; fix the path given by --config or {ENV_CONFIG}"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"cannot read {where}: {reason}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{where} is not valid YAML{at}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{where} must be a mapping of settings (key: value lines), not {type(data).__name__}"
        )
    settings = settings_of(cls)
    for key in data:
        if not isinstance(key, str) or key not in settings:
            raise _unknown(cls, str(key), where, env=False)
    return data


def _unknown(cls: type[Any], key: str, where: str, *, env: bool) -> ConfigError:
    shown = ENV_PREFIX + key.upper() if env else f"key `{key}`"
    location = "" if env else f" in {where}"
    owner = _owner(cls, key)
    if owner is not None:
        return ConfigError(
            f"{shown}{location} is a setting of the {label(owner)}, not of the {label(cls)}; "
            f"remove it from the {label(cls)}'s configuration",
            key=key,
        )
    message = f"unknown setting {shown}{location}"
    close = difflib.get_close_matches(key, settings_of(cls), n=1, cutoff=0.6)
    if close:
        better = ENV_PREFIX + close[0].upper() if env else f"`{close[0]}`"
        message += f"; did you mean {better}?"
    else:
        message += f"; the {label(cls)} settings are listed by --help and docs/configuration.md"
    return ConfigError(message, key=key)


# -- parsing values -------------------------------------------------------------------------

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def coerce(setting: _Setting, raw: object, source: str) -> object:
    """Turn a raw value (typed from YAML, a string from the environment, strings from flags)
    into the setting's type, then run its checks."""
    try:
        value = _parse(setting, raw)
        if value is None:
            return None
        if setting.choices is not None and value not in setting.choices:
            raise ValueError(f"expected one of {', '.join(setting.choices)}")
        if setting.check is not None:
            value = setting.check(value)
    except ValueError as exc:
        shown = "" if setting.secret or raw is None else f", got {_short(raw)}"
        raise ConfigError(
            f"invalid {setting.name} {source}: {exc}{shown}. "
            f"Give it a valid value ({setting.names})",
            key=setting.name,
        ) from None
    return value


def _parse(setting: _Setting, raw: object) -> object:
    kind = setting.kind
    if isinstance(raw, str):
        raw = raw.strip()
        if raw == "" and not setting.multiple:
            raw = None
    if raw is None:
        if setting.optional:
            return None
        raise ValueError(f"must not be empty; expected {kind}")
    if kind == _Kind.STR:
        if not isinstance(raw, str):
            raise ValueError(f"expected {kind} (quote it in YAML)")
        return raw
    if kind == _Kind.BOOL:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in _TRUE | _FALSE:
            return raw.lower() in _TRUE
        raise ValueError(f"expected {kind}")
    if kind == _Kind.INT:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and re.fullmatch(r"[+-]?\d+", raw):
            return int(raw)
        raise ValueError(f"expected {kind}")
    if kind == _Kind.FLOAT:
        number: float
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            number = float(raw)
        elif isinstance(raw, str):
            try:
                number = float(raw)
            except ValueError:
                raise ValueError(f"expected {kind}") from None
        else:
            raise ValueError(f"expected {kind}")
        if not math.isfinite(number):
            raise ValueError(f"expected a finite {kind.removeprefix('a ')}")
        return number
    if kind == _Kind.LIST:
        items = _split(raw) if isinstance(raw, str) else raw
        if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
            raise ValueError(f"expected {kind}")
        return tuple(part for item in items for part in _split(item))
    # _Kind.MAP: a mapping, "a=b,c=d", or a list of "a=b" (repeated flags)
    if isinstance(raw, Mapping):
        pairs = list(raw.items())
    elif isinstance(raw, str | list | tuple):
        texts = [raw] if isinstance(raw, str) else list(raw)
        if not all(isinstance(t, str) for t in texts):
            raise ValueError(f"expected {kind}")
        pairs = []
        for entry in (e for t in texts for e in _split(t)):
            key, sep, value = entry.partition("=")
            if not sep or not key.strip() or not value.strip():
                raise ValueError(f"entry {entry!r} is not name=value")
            pairs.append((key.strip(), value.strip()))
    else:
        raise ValueError(f"expected {kind}")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in pairs):
        raise ValueError(f"expected {kind}")
    assert setting.mapping is not None
    value = setting.mapping(pairs)
    if len(value) < len(pairs):
        names = [k.strip().lower().rstrip(".") for k, _ in pairs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"{', '.join(dupes)} given more than once")
    return value


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- checks across settings (used by each process's ``check``) -----------------------------

CERTS_FIX = (
    "Create the certificates with `fluidity certs init`: it also writes agent.yaml and "
    "server.yaml naming them in the config directory, read when --config is not given."
)


def names(config: Any, key: str) -> str:
    """The YAML key, variable and flag of `key`, for messages."""
    return settings_of(type(config))[key].names


def require(config: Any, keys: Iterable[str], fix: str) -> None:
    """Demand PEM settings that have no default."""
    for key in keys:
        if getattr(config, key) is None:
            raise ConfigError(
                f"{key} is required ({names(config, key)}): give a PEM file path or the PEM "
                f"text. {fix}",
                key=key,
            )


def after(config: Any, low: str, high: str, *, equal_ok: bool = False) -> None:
    """Demand `high` > `low` (or >= with `equal_ok`)."""
    lo, hi = getattr(config, low), getattr(config, high)
    if hi < lo or (hi == lo and not equal_ok):
        relation = "at least" if equal_ok else "greater than"
        raise ConfigError(
            f"{high} must be {relation} {low}, but it is {hi} and {low} is {lo}; "
            f"raise {high} or lower {low} ({names(config, high)})",
            key=high,
        )


def check_tls(
    config: Any, build: Callable[[str, str, str], object], cert: str, key: str, ca: str
) -> None:
    """Demand that `cert`, `key` and `ca` make a TLS context together."""
    try:
        build(getattr(config, cert), getattr(config, key), getattr(config, ca))
    except tls.PEMError as exc:
        shown = "; ".join(names(config, n) for n in (cert, key, ca))
        raise ConfigError(
            f"{cert}, {key} and {ca} cannot be used together: {exc}. Check that each "
            f"is the right certificate and that {key} belongs to {cert}. Settings: {shown}",
            key=cert,
        ) from None


# -- showing settings -----------------------------------------------------------------------


def _default(s: _Setting) -> str:
    if s.default is None and s.secret == "pem":
        return "required"
    if s.default is None or (isinstance(s.default, tuple | Mapping) and not s.default):
        return "none"
    if isinstance(s.default, bool):
        return str(s.default).lower()
    return str(s.default)


def _help(s: _Setting) -> str:
    text = s.help.replace("`", "")
    if s.multiple:
        text += " Repeat the flag or separate values with commas."
    default = _default(s)
    default = default if default == "required" else f"default: {default}"
    return f"{text} [{default}; env: {s.env}]"


def reference(cls: type[Any]) -> str:
    """The table of `cls`'s settings in docs/configuration.md (a test keeps the two equal)."""
    rows = [
        "| Key | Environment | Flag | Default | Meaning |",
        "|---|---|---|---|---|",
    ]
    for s in settings_of(cls).values():
        flag = f"`{s.flag}`"
        if s.kind == _Kind.BOOL:
            flag += f" / `--no-{s.flag[2:]}`"
        default = _default(s)
        default = default if default in ("required", "none") else f"`{default}`"
        meaning = s.help
        if s.choices:
            meaning += " One of " + ", ".join(f"`{c}`" for c in s.choices) + "."
        rows.append(f"| `{s.name}` | `{s.env}` | {flag} | {default} | {meaning} |")
    return "\n".join(rows) + "\n"


def redacted(config: Any) -> dict[str, object]:
    """The config as a plain dict safe to log: PEM text and the proxy password are masked.

    File paths stay visible (they are not secret and help debugging).
    """
    out: dict[str, object] = {}
    for key, s in settings_of(type(config)).items():
        value = getattr(config, key)
        if value is not None and s.secret == "pem":
            if "-----BEGIN " in value:
                value = f"<PEM text, {len(value)} characters>"
        elif value is not None and s.secret == "auth":
            user, _, _ = value.partition(":")
            value = f"{user}:***"
        elif value is not None and s.secret:
            value = "***"
        elif isinstance(value, Mapping):
            value = dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[key] = value
    return out
