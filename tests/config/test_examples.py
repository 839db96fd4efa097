"""The example configs load as shipped, and they and the docs cover every setting."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
import yaml
from click.testing import CliRunner

from fluidity.agent.settings import AgentConfig
from fluidity.cli import main as fluidity
from fluidity.server.settings import ServerConfig
from fluidity.settings import ConfigError, label, load_config, reference

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = [
    (AgentConfig, ROOT / "configs" / "agent.yaml"),
    (ServerConfig, ROOT / "configs" / "server.yaml"),
]


@pytest.fixture
def checkout_with_certs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of configs/ beside certs/ as `fluidity certs init --dir certs` makes it, run
    from elsewhere (paths in a file are relative to the file, not to the working directory)."""
    (tmp_path / "configs").mkdir()
    for _, example in EXAMPLES:
        (tmp_path / "configs" / example.name).write_text(example.read_text())
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(fluidity, ["certs", "init", "--dir", "certs"])
    assert result.exit_code == 0, result.output
    monkeypatch.chdir(tmp_path / "configs")
    return tmp_path


@pytest.mark.parametrize(("cls", "path"), EXAMPLES, ids=["agent", "server"])
def test_example_loads(
    checkout_with_certs: Path, cls: type[attrs.AttrsInstance], path: Path
) -> None:
    copy = checkout_with_certs / "configs" / path.name
    config = load_config(cls, path=str(copy), env={}, flags={})
    # the examples show the defaults, apart from the certificate paths
    defaults = {f.name: f.default for f in attrs.fields(cls)}
    for name, value in attrs.asdict(config, recurse=False).items():
        if name.endswith(("_cert", "_key")) and name != "api_key":
            assert Path(value).parent == checkout_with_certs / "certs", name
        else:
            assert value == defaults[name], name


@pytest.mark.parametrize(("cls", "path"), EXAMPLES, ids=["agent", "server"])
def test_example_has_every_key(cls: type[attrs.AttrsInstance], path: Path) -> None:
    data = yaml.safe_load(path.read_text())
    assert set(data) == {f.name for f in attrs.fields(cls)}


def test_examples_without_certs_fail_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"file '.*/certs/ca\.pem' does not exist"):
        load_config(AgentConfig, path=str(EXAMPLES[0][1]), env={}, flags={})


@pytest.mark.parametrize("cls", [AgentConfig, ServerConfig])
def test_configuration_doc_covers_every_setting(cls: type[attrs.AttrsInstance]) -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    for field in attrs.fields(cls):
        assert f"`{field.name}`" in doc, field.name
        assert f"`FLUIDITY_{field.name.upper()}`" in doc, field.name
        assert "`--" + field.name.replace("_", "-") + "`" in doc, field.name
    table = reference(cls)
    assert table in doc, f"docs/configuration.md: replace the {label(cls)} table with\n{table}"
