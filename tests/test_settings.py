"""Tests of the settings model, its loader, the example config and the configuration reference."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
from click.testing import CliRunner
from pydantic import BaseModel, ValidationError

from reconciler.errors import ConfigError
from reconciler.fleet.vocabulary import label_specs
from reconciler.forgejo.types import LabelSpec
from reconciler.settings import (
    ENV_PREFIX,
    Settings,
    TimeoutsSettings,
    load_settings,
    render_reference,
)
from webhook.cli import main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "fleet.example.toml"
REFERENCE = ROOT / "docs" / "configuration.md"

MINIMAL = """
[forgejo]
url = "https://forgejo.example.org"
token = "file-token"
bot_login = "fleet-bot"
repos = ["acme/widgets"]
"""

HOST = """
[[hosts]]
name = "{name}"
address = "{name}.example.org"
workdir = "/srv/work"
adapter = "{adapter}"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fleet.toml"
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path | None, env: dict[str, str] | None = None) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env=env or {})
    return dict(caught.value.problems)


def model_paths(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    """Every field path, walking sections, [[lists]] and <name> tables of sub-models."""
    for name, field in model.model_fields.items():
        path = prefix + name
        annotation = field.annotation
        args = [arg for arg in get_args(annotation) if arg is not type(None)]
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from model_paths(annotation, path + ".")
            continue
        yield path
        if get_origin(annotation) is tuple and _is_model(args[0]):
            yield from model_paths(args[0], path + "[].")
        elif args and _is_model(args[-1]):
            yield from model_paths(args[-1], path + ".<name>.")


def _is_model(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, BaseModel)


# --- the example and the reference ---------------------------------------------------------


def test_example_config_loads() -> None:
    """The shipped example is valid as it stands, with no environment help."""
    settings = load_settings(EXAMPLE, env={})
    assert settings.forgejo.repos == ("acme/widgets", "acme/docs")
    assert [host.name for host in settings.hosts] == ["build-01", "local"]


def test_example_config_shows_every_section_and_key() -> None:
    """Every section and every key of the model appears in the example file."""
    data = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    assert set(data) == set(Settings.model_fields)
    shown: set[str] = set()

    def collect(value: Any, path: str) -> None:
        if isinstance(value, dict) and path not in ("timeouts.per_role", "timeouts.per_label"):
            for key, item in value.items():
                is_named = path in ("adapters", "budgets.roles")
                collect(item, f"{path}.<name>" if is_named else f"{path}.{key}".lstrip("."))
            shown.add(path)
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            shown.add(path)
            for item in value:
                collect(item, path + "[]")
        else:
            shown.add(path)

    collect(data, "")
    missing = [path for path in model_paths(Settings) if path not in shown]
    assert missing == []


def test_every_field_has_a_description() -> None:
    """The reference is built from descriptions, so none may be missing."""

    def undescribed(model: type[BaseModel], prefix: str) -> Iterator[str]:
        for name, field in model.model_fields.items():
            if not field.description:
                yield prefix + name
            for arg in (field.annotation, *get_args(field.annotation)):
                if _is_model(arg):
                    yield from undescribed(arg, f"{prefix}{name}.")

    assert list(undescribed(Settings, "")) == []


def test_reference_lists_every_field() -> None:
    """docs/configuration.md names every field of the model, found by walking it."""
    text = REFERENCE.read_text(encoding="utf-8")
    missing = [path for path in model_paths(Settings) if f"| `{path}` |" not in text]
    assert missing == []


def test_reference_matches_the_model() -> None:
    """The generated reference part of the doc is exactly what the model renders today."""
    text = REFERENCE.read_text(encoding="utf-8")
    generated = text.split("<!-- reference:begin -->\n", 1)[1].split("<!-- reference:end -->")[0]
    assert generated == render_reference(), (
        "docs/configuration.md is out of date: replace the part between the reference markers "
        "with reconciler.settings.render_reference()"
    )


# --- errors --------------------------------------------------------------------------------


def test_unknown_key_is_an_error_with_its_path(tmp_path: Path) -> None:
    """Unknown keys anywhere are reported at their dotted path, with a close match suggested."""
    text = (
        MINIMAL
        + "tokn = 1\n[loops]\nworkers = 2\n"
        + HOST.format(name="a", adapter="codex")
        + "colour = 1\n"
    )
    problems = problems_of(write(tmp_path, text))
    assert problems["forgejo.tokn"] == "unknown key; did you mean 'token'?"
    assert problems["loops"].startswith("unknown key")
    assert "hosts.0.colour" in problems


def test_bad_url_is_reported_at_forgejo_url(tmp_path: Path) -> None:
    """A URL that does not parse is reported at forgejo.url in pydantic's words."""
    text = MINIMAL.replace("https://forgejo.example.org", "forgejo.example.org")
    problems = problems_of(write(tmp_path, text))
    assert problems["forgejo.url"].startswith("Input should be a valid URL")


def test_url_with_api_suffix_is_refused(tmp_path: Path) -> None:
    """forgejo.url is the instance's base URL; /api/v1 is added by the client."""
    text = MINIMAL.replace("example.org", "example.org/api/v1")
    assert "without /api/v1" in problems_of(write(tmp_path, text))["forgejo.url"]


def test_base_url_is_kept_without_trailing_slash(tmp_path: Path) -> None:
    """The base URL is normalised so callers can append /api/v1/... directly."""
    text = MINIMAL.replace("example.org", "example.org/forge/")
    assert load_settings(write(tmp_path, text), env={}).forgejo.url == (
        "https://forgejo.example.org/forge"
    )


def test_every_error_is_reported_at_once(tmp_path: Path) -> None:
    """One load reports all field problems, not only the first."""
    text = (
        MINIMAL.replace('"acme/widgets"', '"widgets"')
        + "[loop]\nworkers = 0\nresync_interval = -5\n[webhook]\nport = 70000\n"
    )
    problems = problems_of(write(tmp_path, text))
    assert {"forgejo.repos.0", "loop.workers", "loop.resync_interval", "webhook.port"} <= set(
        problems
    )


def test_host_errors_are_reported_together_with_field_errors(tmp_path: Path) -> None:
    """A bad URL does not hide a host's unknown adapter or duplicate name: one pass names
    them all, and a value from the environment names its variable."""
    text = MINIMAL.replace("https://", "not a url ") + (
        '[[hosts]]\nname = "h1"\naddress = "localhost"\nadapter = "claud"\nworkdir = "/w"\n'
        '[[hosts]]\nname = "h1"\naddress = "localhost"\nworkdir = "/w"\n'
    )
    with pytest.raises(ConfigError) as raised:
        load_settings(write(tmp_path, text), env={"AGENT_FLEET_LOOP__WORKERS": "many"})
    problems = dict(raised.value.problems)
    assert "forgejo.url" in problems
    assert problems["hosts.0.adapter"].startswith("no adapter named 'claud'")
    assert problems["hosts.1.name"].startswith("duplicate host name 'h1'")
    assert problems["loop.workers"].endswith("(value from AGENT_FLEET_LOOP__WORKERS)")


def test_missing_required_fields_are_each_named(tmp_path: Path) -> None:
    """A section without its required keys lists each of them."""
    problems = problems_of(write(tmp_path, '[forgejo]\nurl = "https://f.example.org"\n'))
    assert problems["forgejo.token"] == "Field required"
    assert problems["forgejo.bot_login"] == "Field required"


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    """A file that is not TOML is reported at <file> with line and column."""
    problems = problems_of(write(tmp_path, MINIMAL + "workers = \n"))
    assert "line 7" in problems["<file>"]
    assert "column" in problems["<file>"]


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """A path that does not exist is a ConfigError naming the file, not an OSError."""
    with pytest.raises(ConfigError) as caught:
        load_settings(tmp_path / "nope.toml", env={})
    assert caught.value.problems == [("<file>", "file not found")]
    assert caught.value.source == str(tmp_path / "nope.toml")


def test_durations_must_be_positive(tmp_path: Path) -> None:
    """Zero or negative seconds are refused wherever a duration is expected."""
    text = MINIMAL + "[timeouts]\ntask_default = 0\nper_role = { review = -1 }\n"
    problems = problems_of(write(tmp_path, text))
    assert "timeouts.task_default" in problems
    assert "timeouts.per_role.review" in problems


def test_backoff_max_below_initial_is_an_error(tmp_path: Path) -> None:
    """A backoff ceiling below its starting delay makes no sense and is refused."""
    text = MINIMAL + "[retries]\nbackoff_initial = 100\nbackoff_max = 10\n"
    assert problems_of(write(tmp_path, text))["retries.backoff_max"] == (
        "must be at least backoff_initial (100)"
    )


# --- environment ---------------------------------------------------------------------------


def test_environment_overrides_file_and_file_overrides_default(tmp_path: Path) -> None:
    """Precedence is environment, then file, then default; __ separates nesting levels."""
    text = MINIMAL + '[webhook]\nport = 9000\nbind = "0.0.0.0"\n'
    env = {
        "AGENT_FLEET_FORGEJO__URL": "https://env.example.org",
        "AGENT_FLEET_WEBHOOK__PORT": "9100",
    }
    settings = load_settings(write(tmp_path, text), env=env)
    assert settings.forgejo.url == "https://env.example.org"
    assert settings.webhook.port == 9100
    assert settings.webhook.bind == "0.0.0.0"
    assert settings.forgejo.token.get_secret_value() == "file-token"
    assert settings.loop.workers == 4


def test_environment_secret_and_json_list(tmp_path: Path) -> None:
    """Secrets and lists (as JSON) come from the environment; tables merge with the file's."""
    text = MINIMAL + "[timeouts]\nper_role = { review = 900 }\n"
    env = {
        "AGENT_FLEET_WEBHOOK__SECRET": "s3cret",
        "agent_fleet_forgejo__repos": '["acme/a", "acme/b"]',
        "AGENT_FLEET_TIMEOUTS__PER_ROLE": '{"developer": 7200}',
    }
    settings = load_settings(write(tmp_path, text), env=env)
    assert settings.webhook.secret is not None
    assert settings.webhook.secret.get_secret_value() == "s3cret"
    assert settings.forgejo.repos == ("acme/a", "acme/b")
    assert settings.timeouts.per_role == {"review": 900, "developer": 7200}


def test_no_file_means_defaults_and_environment() -> None:
    """With path None only defaults and the environment count."""
    env = {
        "AGENT_FLEET_FORGEJO__URL": "https://f.example.org",
        "AGENT_FLEET_FORGEJO__TOKEN": "t",
        "AGENT_FLEET_FORGEJO__BOT_LOGIN": "bot",
    }
    settings = load_settings(None, env=env)
    assert settings.forgejo.bot_login == "bot"
    assert settings.store.path == Path("var/agent-fleet")
    assert problems_of(None) == {
        "forgejo": "Field required",
    }


def test_unknown_environment_variable_is_an_error_with_a_hint(tmp_path: Path) -> None:
    """A single underscore where __ was meant is reported, not silently ignored."""
    problems = problems_of(write(tmp_path, MINIMAL), {"AGENT_FLEET_WEBHOOK_SECRET": "x"})
    assert "AGENT_FLEET_WEBHOOK__SECRET" in problems["AGENT_FLEET_WEBHOOK_SECRET"]


def test_environment_errors_name_the_variable(tmp_path: Path) -> None:
    """A bad value from the environment says which variable it came from."""
    problems = problems_of(write(tmp_path, MINIMAL), {"AGENT_FLEET_LOOP__WORKERS": "many"})
    assert problems["loop.workers"].endswith("(value from AGENT_FLEET_LOOP__WORKERS)")
    problems = problems_of(write(tmp_path, MINIMAL), {"AGENT_FLEET_FORGEJO__REPOS": "acme/a"})
    assert "must be given as JSON" in problems["<environment>"]


def test_loading_reads_the_given_environment_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With env given, os.environ is not consulted, and loading leaves no trace behind."""
    monkeypatch.setenv("AGENT_FLEET_LOOP__WORKERS", "9")
    path = write(tmp_path, MINIMAL)
    before = (sorted(os.environ.items()), sorted(tmp_path.iterdir()))
    first, second = load_settings(path, env={}), load_settings(path, env={})
    assert first == second
    assert first.loop.workers == 4
    assert (sorted(os.environ.items()), sorted(tmp_path.iterdir())) == before
    assert load_settings(path).loop.workers == 9


# --- secrets -------------------------------------------------------------------------------


def test_secrets_are_not_revealed(tmp_path: Path) -> None:
    """repr/str of the settings and the text of a ConfigError never show secret values."""
    text = MINIMAL + '[webhook]\nsecret = "hook-secret-value"\n[api]\noperator_token = "op-value"\n'
    settings = load_settings(write(tmp_path, text), env={})
    for shown in (repr(settings), str(settings), repr(settings.forgejo), str(settings.webhook)):
        assert "file-token" not in shown
        assert "hook-secret-value" not in shown
        assert "op-value" not in shown
    broken = text + "[loop]\nworkers = 0\n"
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, broken), env={"AGENT_FLEET_FORGEJO__TOKEN": ""})
    assert "hook-secret-value" not in str(caught.value)
    assert dict(caught.value.problems)["forgejo.token"].startswith("must not be empty")


# --- labels --------------------------------------------------------------------------------


def test_status_labels_must_share_one_scope(tmp_path: Path) -> None:
    """A status label outside the others' scope is refused with the reason Forgejo gives."""
    problems = problems_of(write(tmp_path, MINIMAL + '[labels]\nstatus_done = "done"\n'))
    message = problems["labels.status_done"]
    assert "share one scope" in message
    assert "'done' has no scope" in message


def test_priority_labels_need_a_scope(tmp_path: Path) -> None:
    """The first priority label must have a scope at all (text before the last '/')."""
    text = MINIMAL + '[labels]\npriority_high = "high"\npriority_medium = "medium"\n'
    assert "need a scope" in problems_of(write(tmp_path, text))["labels.priority_high"]


def test_renamed_scope_is_accepted_when_consistent(tmp_path: Path) -> None:
    """Labels may be renamed as long as each group keeps one scope."""
    names = ("todo", "doing", "review", "done", "failed")
    text = MINIMAL + "[labels]\n" + "".join(f'status_{n} = "fleet/state/{n}"\n' for n in names)
    settings = load_settings(write(tmp_path, text), env={})
    assert settings.labels.status_review == "fleet/state/review"


def test_status_and_priority_must_not_share_a_scope(tmp_path: Path) -> None:
    """Setting a priority would otherwise remove the status label."""
    text = (
        MINIMAL
        + "[labels]\n"
        + "".join(f'priority_{n} = "status/{n}"\n' for n in ("high", "medium", "low"))
    )
    assert "share the scope 'status'" in problems_of(write(tmp_path, text))["labels.priority_high"]


def test_label_specs_make_only_status_and_priority_exclusive() -> None:
    """The vocabulary to create has status/priority exclusive and host roles as labels."""
    settings = load_settings(EXAMPLE, env={})
    specs = {spec.name: spec for spec in label_specs(settings)}
    exclusive = {name for name, spec in specs.items() if spec.exclusive}
    assert exclusive == {
        "priority/high", "priority/medium", "priority/low",
        "status/todo", "status/doing", "status/review", "status/done", "status/failed",
    }  # fmt: skip
    assert specs["agent/review"] == LabelSpec(
        name="agent/review",
        color="5319e7",
        description="Needs an agent with role review.",
        exclusive=False,
    )
    assert {"fleet/task", "fleet/retry", "fleet/hold", "needs/code:rust"} <= set(specs)
    assert all(len(spec.color) == 6 for spec in specs.values())


# --- hosts, adapters, matrix ---------------------------------------------------------------


def test_host_adapter_must_exist(tmp_path: Path) -> None:
    """A host naming an adapter that is not defined is an error at that host."""
    text = MINIMAL + HOST.format(name="a", adapter="codex") + HOST.format(name="b", adapter="gpt")
    problems = problems_of(write(tmp_path, text))
    assert problems == {
        "hosts.1.adapter": "no adapter named 'gpt' in [adapters] (known: claude-code, codex)"
    }


def test_duplicate_host_name_is_an_error(tmp_path: Path) -> None:
    """Host names are agent ids, so the second use of a name is refused."""
    text = MINIMAL + HOST.format(name="a", adapter="codex") * 2
    assert problems_of(write(tmp_path, text)) == {
        "hosts.1.name": "duplicate host name 'a' (also hosts.0)"
    }


def test_localhost_runs_without_ssh(tmp_path: Path) -> None:
    """The address localhost marks a host whose tasks run on this machine."""
    text = MINIMAL + HOST.format(name="localhost", adapter="codex")
    text = text.replace("localhost.example.org", "localhost")
    assert load_settings(write(tmp_path, text), env={}).hosts[0].is_local


def test_file_adapters_are_added_to_the_builtin_ones(tmp_path: Path) -> None:
    """An [adapters.x] table adds x; claude-code and codex stay available."""
    text = MINIMAL + '[adapters.aider]\ncommand = ["aider", "--message", "{prompt}"]\n'
    settings = load_settings(write(tmp_path, text), env={})
    assert set(settings.adapters) == {"claude-code", "codex", "aider"}
    assert settings.adapters["aider"].parser == "raw"
    assert settings.adapters["claude-code"].parser == "claude-json"


def test_unknown_command_placeholder_is_an_error(tmp_path: Path) -> None:
    """Only {prompt}, {workdir} and {session_id} may appear in a command template."""
    text = MINIMAL + (
        '[adapters.x]\ncommand = ["run", "--dir={work_dir}"]\nresume_command = ["run", "--again"]\n'
    )
    problems = problems_of(write(tmp_path, text))
    assert "unknown placeholder {work_dir}" in problems["adapters.x.command"]
    assert problems["adapters.x.resume_command"] == "must contain {session_id}"


def test_matrix_enabled_requires_each_connection_field(tmp_path: Path) -> None:
    """Turning Matrix on without its connection details names every missing one."""
    text = MINIMAL + '[matrix]\nenabled = true\nuser_id = "@bot:example.org"\n'
    assert problems_of(write(tmp_path, text)) == {
        "matrix.homeserver": "required when matrix.enabled = true",
        "matrix.access_token": "required when matrix.enabled = true",
        "matrix.room_id": "required when matrix.enabled = true",
    }


def test_task_timeout_prefers_label_over_role() -> None:
    """per_label wins over per_role, the longest match applies, else the default."""
    timeouts = TimeoutsSettings(per_role={"review": 600}, per_label={"needs/gpu": 7200})
    assert timeouts.for_task(roles=("review",), labels=("needs/gpu",)) == 7200
    assert timeouts.for_task(roles=("review",), labels=()) == 600
    assert timeouts.for_task(roles=("developer",), labels=()) == 3600


# --- the CLI -------------------------------------------------------------------------------


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


@pytest.mark.usefixtures("clean_environment")
def test_config_check_accepts_the_example() -> None:
    """agent-fleet config check exits 0 on the example and names the Forgejo URL."""
    result = CliRunner().invoke(main, ["config", "check", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    assert "https://forgejo.example.org" in result.stdout


@pytest.mark.usefixtures("clean_environment")
def test_config_check_rejects_a_broken_copy_with_field_paths(tmp_path: Path) -> None:
    """A broken copy of the example exits 2 and prints each bad field's path."""
    text = EXAMPLE.read_text(encoding="utf-8")
    text = text.replace('url = "https://forgejo.example.org"', 'url = "not a url"')
    text = text.replace('adapter = "codex"', 'adapter = "missing"').replace(
        "[loop]", "[loop]\nspeed = 1"
    )
    path = write(tmp_path, text)
    result = CliRunner().invoke(main, ["config", "check", str(path)])
    assert result.exit_code == 2
    assert "forgejo.url" in result.stderr
    assert "loop.speed" in result.stderr


def test_variables_read_by_commands_are_not_taken_for_typos() -> None:
    """AGENT_FLEET_WORKER_TOKEN belongs to `agent-fleet agent run`, not to the settings."""
    from reconciler.settings import COMMAND_VARIABLES, load_settings

    env = {
        "AGENT_FLEET_FORGEJO__URL": "https://forgejo.example.org",
        "AGENT_FLEET_FORGEJO__TOKEN": "t",
        "AGENT_FLEET_FORGEJO__BOT_LOGIN": "bot",
        **dict.fromkeys(COMMAND_VARIABLES, "x"),
    }
    assert load_settings(None, env=env).forgejo.bot_login == "bot"


def test_matrix_room_ids_without_a_server_part_and_aliases_are_accepted() -> None:
    """Room version 12 ids (`!AbC`), older ids (`!AbC:server`) and aliases all validate."""
    from reconciler.settings import MatrixSettings

    for room in ("!AbC-12_x", "!abc:example.org", "#fleet:example.org"):
        assert MatrixSettings(room_id=room).room_id == room
    with pytest.raises(ValidationError):
        MatrixSettings(room_id="#fleet")
