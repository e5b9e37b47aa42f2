"""`agent-fleet config check` reports every problem in one pass and names the environment
variable at fault when a value came from the environment."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from webhook.cli import main

# A bad URL, a host naming an unknown adapter, a duplicate host name, Matrix switched on
# without its settings, clashing label scopes and managed webhooks without a webhook URL.
BROKEN = """
[forgejo]
url = "not a url"
token = "t"
bot_login = "bot"
repos = ["acme/web"]
manage_webhooks = true

[[hosts]]
name = "h1"
address = "10.0.0.1"
adapter = "nope"
workdir = "/srv/work"

[[hosts]]
name = "h1"
address = "10.0.0.2"
workdir = "/srv/work"

[matrix]
enabled = true

[labels]
priority_high = "status/high"
"""

VALID = """
[forgejo]
url = "http://forgejo.internal:3000"
token = "t"
bot_login = "bot"
repos = ["acme/web"]
"""


def check(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    result = CliRunner().invoke(main, ["config", "check", str(path)], env=env or {})
    return result.exit_code, result.output


def test_config_check_reports_field_and_cross_section_errors_in_one_pass(tmp_path: Path) -> None:
    """The URL error does not hide the host, Matrix, label and webhook errors behind it."""
    code, output = check(tmp_path, BROKEN)
    assert code == 2
    for expected in (
        "forgejo.url:",
        "hosts.0.adapter: no adapter named 'nope'",
        "hosts.1.name: duplicate host name 'h1'",
        "matrix.homeserver: required when matrix.enabled = true",
        "labels.priority_high: priority and status labels share the scope",
        "forgejo.webhook_url: required when forgejo.manage_webhooks = true",
    ):
        assert expected in output, output
    assert "9 error(s)" in output, output  # 4 Matrix fields, and one each for the rest


def test_an_invalid_environment_value_names_its_variable_as_written(tmp_path: Path) -> None:
    """The variable is named exactly (its own spelling), for scalar and nested values."""
    code, output = check(
        tmp_path,
        VALID,
        env={"agent_fleet_loop__workers": "many", "AGENT_FLEET_FORGEJO__URL": "ftp://x"},
    )
    assert code == 2
    assert "loop.workers:" in output and "(value from agent_fleet_loop__workers)" in output
    assert "forgejo.url:" in output and "(value from AGENT_FLEET_FORGEJO__URL)" in output


def test_an_environment_value_that_is_not_json_does_not_hide_the_other_errors(
    tmp_path: Path,
) -> None:
    """A list given as broken JSON is named, and the file's own errors are still reported."""
    code, output = check(tmp_path, BROKEN, env={"AGENT_FLEET_HOSTS": "[{broken"})
    assert code == 2
    assert "cannot parse AGENT_FLEET_HOSTS: lists and tables must be given as JSON" in output
    assert "forgejo.url:" in output and "matrix.homeserver:" in output, output


def test_a_host_error_from_the_environment_names_that_variable(tmp_path: Path) -> None:
    """Hosts given as JSON in the environment: the error says which variable set them."""
    hosts = '[{"name": "a", "address": "b", "adapter": "zz", "workdir": "/w"}]'
    code, output = check(tmp_path, VALID, env={"AGENT_FLEET_HOSTS": hosts})
    assert code == 2
    assert "hosts.0.adapter: no adapter named 'zz'" in output
    assert "(value from AGENT_FLEET_HOSTS)" in output


def test_a_valid_file_passes(tmp_path: Path) -> None:
    """Exit 0 and a one-line summary of what the daemon would watch."""
    code, output = check(tmp_path, VALID)
    assert code == 0, output
    assert "OK — Forgejo http://forgejo.internal:3000" in output and "acme/web" in output


def test_a_rule_switched_on_from_the_environment_names_that_variable(tmp_path: Path) -> None:
    """Matrix enabled by a variable: its missing settings point at that variable."""
    code, output = check(tmp_path, VALID, env={"AGENT_FLEET_MATRIX__ENABLED": "true"})
    assert code == 2
    assert (
        "matrix.homeserver: required when matrix.enabled = true "
        "(matrix.enabled from AGENT_FLEET_MATRIX__ENABLED)"
    ) in output
