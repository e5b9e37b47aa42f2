"""``agent-fleet hosts add|scale|remove|install`` (issue 14, point 1): the configuration file
edited with its comments kept and validated before it is replaced; a host removed after a drain
through the running daemon, which takes the change up; a host prepared over the real private
sshd, step by step, idempotently, and only looked at with ``--dry-run``.

Most install tests put a stand-in npm on the sshd host's PATH that writes the package's manifest
where npm would; one runs the real npm (the registry, or its cache) and the installed agent CLI.
Everything else — ssh, sh, git, mkdir — is real.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from click.testing import CliRunner
from pydantic import SecretStr

from reconciler.run.hosts import run_remote
from reconciler.run.install import Step, install_host, split_package
from reconciler.sandbox import ForgejoSandbox
from reconciler.settings import ForgejoSettings, Settings, load_settings
from webhook.cli import main
from webhook.daemon import Daemon

if TYPE_CHECKING:
    from tests.sshd_fixtures import SshServer

BASE = """\
# The fleet's configuration (a person wrote this comment).
[forgejo]
url = "{url}"
token = "{token}"
bot_login = "fleet-admin"
repos = ["fleet-admin/demo"]

[webhook]
bind = "127.0.0.1"
port = 0

[api]
operator_token = "hosts-cli-operator"

[store]
path = "{state}"

# Hosts below; keep this comment.
[[hosts]]
name = "box-1"          # the first one
address = "localhost"
workdir = "{work}"
"""


def config_file(tmp_path: Path, *, url: str = "http://forgejo.invalid", token: str = "t") -> Path:
    path = tmp_path / "fleet.toml"
    path.write_text(
        BASE.format(url=url, token=token, state=tmp_path / "state", work=tmp_path / "work")
    )
    return path


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_hosts_add_appends_a_valid_host_and_keeps_every_comment(tmp_path: Path) -> None:
    """The new [[hosts]] table is added with what was given; the comments and the existing
    host are untouched; the file loads as the daemon would load it."""
    path = config_file(tmp_path)
    code, out = run(
        "hosts", "add", "gpu-02", "--ssh", "fleet@gpu-02.internal", "--workdir", "/srv/work",
        "--adapter", "codex", "--roles", "developer,tester", "--capabilities", "code:rust",
        "--max-concurrency", "3", "--forgejo-login", "gpu-02-bot", "--config", str(path),
    )  # fmt: skip
    assert code == 0, out
    assert "added host gpu-02" in out
    text = path.read_text()
    for comment in ("# The fleet's configuration", "# Hosts below; keep this comment.",
                    "# the first one"):  # fmt: skip
        assert comment in text
    [first, added] = load_settings(path).hosts
    assert first.name == "box-1"
    assert (added.name, added.user, added.address, added.adapter, added.agent_type) == (
        "gpu-02", "fleet", "gpu-02.internal", "codex", "codex",
    )  # fmt: skip
    assert added.roles == ("developer", "tester") and added.capabilities == ("code:rust",)
    assert added.max_concurrency == 3 and added.forgejo_login == "gpu-02-bot"


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--adapter", "nope"], "no adapter named 'nope'"),
        (["--roles", "Bad Role"], "hosts.1.roles"),
        (["--max-concurrency", "0"], "hosts.1.max_concurrency"),
    ],
)
def test_an_invalid_host_is_refused_and_the_file_is_left_alone(
    tmp_path: Path, args: list[str], problem: str
) -> None:
    """Exit 2 with the problem at its field path; not one byte of the file changed, and no
    temporary file is left behind."""
    path = config_file(tmp_path)
    before = path.read_bytes()
    code, out = run(
        "hosts", "add", "gpu-02", "--ssh", "gpu-02.internal", "--workdir", "/w", *args,
        "--config", str(path),
    )  # fmt: skip
    assert code == 2 and problem in out, out
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fleet.toml"]


def test_a_second_host_of_the_same_name_is_refused(tmp_path: Path) -> None:
    """Names are ids: adding box-1 again changes nothing."""
    path = config_file(tmp_path)
    before = path.read_bytes()
    code, out = run("hosts", "add", "box-1", "--ssh", "x", "--workdir", "/w", "--config", str(path))
    assert code == 2 and "already declared" in out
    assert path.read_bytes() == before


def test_hosts_scale_changes_only_that_hosts_concurrency(tmp_path: Path) -> None:
    """max_concurrency set (added where the table had none), the rest as it was."""
    path = config_file(tmp_path)
    code, out = run("hosts", "scale", "box-1", "4", "--config", str(path))
    assert code == 0 and "4 task(s) at once" in out
    assert load_settings(path).hosts[0].max_concurrency == 4
    assert "# the first one" in path.read_text()
    code, out = run("hosts", "scale", "nobody", "2", "--config", str(path))
    assert code == 2 and "no host named 'nobody'" in out


def test_hosts_remove_now_removes_the_table_and_keeps_the_rest(tmp_path: Path) -> None:
    """--now: no daemon needed; the table is gone, the comments above it stay."""
    path = config_file(tmp_path)
    code, out = run("hosts", "remove", "box-1", "--now", "--config", str(path))
    assert code == 0, out
    assert load_settings(path).hosts == ()
    assert "# Hosts below; keep this comment." in path.read_text()


def test_hosts_remove_drains_the_host_through_the_daemon_which_then_drops_it(
    served_forge: ForgejoSandbox, tmp_path: Path
) -> None:
    """Without --now: drained through the running daemon (no running task to wait for), then
    removed from the file; the daemon, watching the file, reloads without the host."""
    path = config_file(tmp_path, url=served_forge.url, token=served_forge.admin_token)
    daemon = Daemon(load_settings(path), config_path=path)
    daemon.start()
    try:
        store = daemon.assembly.store
        deadline = time.monotonic() + 30
        while store.find_agent("box-1") is None:
            assert time.monotonic() < deadline, "the host's agent record never appeared"
            time.sleep(0.05)
        code, out = run("hosts", "remove", "box-1", "--server", daemon.url,
                        "--config", str(path))  # fmt: skip
        assert code == 0, out
        assert "draining box-1" in out and "removed host box-1" in out
        assert store.get_agent("box-1").drain_requested
        assert load_settings(path).hosts == ()
        deadline = time.monotonic() + 30
        while daemon.assembly.settings().hosts:
            assert time.monotonic() < deadline, "the daemon did not reload the configuration"
            time.sleep(0.05)
    finally:
        daemon.stop()


def test_hosts_remove_without_a_daemon_says_so_and_keeps_the_host(tmp_path: Path) -> None:
    """No daemon answers: exit 3 with the hint about --now; the host stays declared."""
    path = config_file(tmp_path)
    code, out = run(
        "hosts", "remove", "box-1", "--server", "http://127.0.0.1:9", "--config", str(path)
    )
    assert code == 3 and "--now" in out
    assert [h.name for h in load_settings(path).hosts] == ["box-1"]


# --- install over the real sshd ---------------------------------------------------------------

FAKE_NPM = """\
# npm install --global --no-fund --no-audit --prefix PREFIX NAME@VERSION, as npm lays it out
echo "$@" >> "$NPM_LOG"
prefix=$6; spec=$7; name=${spec%@*}; version=${spec##*@}
mkdir -p "$prefix/lib/node_modules/$name" "$prefix/bin"
printf '{\\n  "name": "%s",\\n  "version": "%s"\\n}\\n' "$name" "$version" \\
  > "$prefix/lib/node_modules/$name/package.json"
"""


def ssh_settings(sshd: SshServer, tmp_path: Path, **host: object) -> Settings:
    return Settings(
        forgejo=ForgejoSettings(
            url="http://forgejo.invalid", token=SecretStr("t"), repos=("a/b",), bot_login="b"
        ),
        hosts=(
            sshd.host_settings(
                name="gpu-02",
                adapter="codex",
                known_hosts_file=sshd.known_hosts,
                **{
                    "workdir": str(tmp_path / "remote-work"),
                    "cli_prefix": str(tmp_path / "prefix"),
                    **host,
                },
            ),
        ),
    )


def test_install_prepares_the_host_step_by_step_and_a_second_run_changes_nothing(
    sshd: SshServer, tmp_path: Path
) -> None:
    """git found, the work directory created, the pinned CLI installed into the prefix; run
    again, every step finds its work done and npm is not called again."""
    npm_log = tmp_path / "npm.log"
    sshd.install_cli("npm", f"NPM_LOG={npm_log}\n" + FAKE_NPM)
    settings = ssh_settings(sshd, tmp_path)
    host = settings.hosts[0]
    reported: list[Step] = []
    steps = install_host(settings, host, report=reported.append)
    assert reported == steps
    assert [(s.name, s.ok) for s in steps] == [("git", True), ("workdir", True),
                                              ("agent CLI", True)]  # fmt: skip
    assert steps[0].detail.startswith("git version")
    assert steps[1].detail == f"created {tmp_path / 'remote-work'}"
    name, version = split_package(settings.adapters["codex"].package or "")
    assert steps[2].detail == f"installed {name} {version} in {tmp_path / 'prefix'}"
    assert (tmp_path / "remote-work").is_dir()
    assert npm_log.read_text().split() == [
        "install", "--global", "--no-fund", "--no-audit", "--prefix", str(tmp_path / "prefix"),
        f"{name}@{version}",
    ]  # fmt: skip
    again = install_host(settings, host)
    assert [s.detail for s in again[1:]] == [
        f"{tmp_path / 'remote-work'} exists",
        f"{name} {version} is installed in {tmp_path / 'prefix'}",
    ]
    assert len(npm_log.read_text().splitlines()) == 1


@pytest.mark.slow
def test_the_real_npm_installs_the_pinned_cli_where_the_executor_finds_it(
    sshd: SshServer, tmp_path: Path
) -> None:
    """The real npm installs the codex adapter's pinned CLI into a prefix whose ``bin`` is on
    the host's ssh PATH: the executor's remote shell (``run_remote``) then finds ``codex`` and it
    reports the pinned version. Before, ``--dry-run`` changes nothing; after, a second run
    finds it installed without calling npm (an npm that would fail is put first on the PATH)."""
    if shutil.which("npm") is None:
        pytest.fail("npm is not installed (Node.js >= 18; .ci/agent-clis.sh needs it too)")
    prefix = sshd.bin_dir.parent  # the fixture's remote PATH starts with <prefix>/bin
    settings = ssh_settings(sshd, tmp_path, cli_prefix=str(prefix))
    host = settings.hosts[0]
    name, version = split_package(settings.adapters["codex"].package or "")
    installed = prefix / "lib" / "node_modules" / name
    try:
        dry = install_host(settings, host, dry_run=True)
        assert dry[-1] == Step(
            "agent CLI", True, f"would run: npm install --global --prefix {prefix} {name}@{version}"
        )
        assert not installed.exists() and not (sshd.bin_dir / "codex").exists()
        assert not (tmp_path / "remote-work").exists()

        steps = install_host(settings, host)
        assert [(s.name, s.ok) for s in steps] == [("git", True), ("workdir", True),
                                                  ("agent CLI", True)], steps  # fmt: skip
        assert steps[-1].detail == f"installed {name} {version} in {prefix}"
        found = run_remote(
            host, "command -v codex && codex --version", timeout=60,
            known_hosts_file=sshd.known_hosts,
        )  # fmt: skip
        assert found.exit_code == 0, found
        assert found.stdout.split() == [str(sshd.bin_dir / "codex"), "codex-cli", version]

        sshd.install_cli("npm", 'echo "npm must not run again" >&2\nexit 1\n')
        again = install_host(settings, host)
        assert [s.ok for s in again] == [True, True, True], again
        assert again[-1].detail == f"{name} {version} is installed in {prefix}"
    finally:
        shutil.rmtree(prefix / "lib", ignore_errors=True)


def test_install_dry_run_only_looks(sshd: SshServer, tmp_path: Path) -> None:
    """--dry-run says what would be done and does nothing: no directory, no npm."""
    npm_log = tmp_path / "npm.log"
    sshd.install_cli("npm", f"NPM_LOG={npm_log}\n" + FAKE_NPM)
    settings = ssh_settings(sshd, tmp_path)
    steps = install_host(settings, settings.hosts[0], dry_run=True)
    assert all(s.ok for s in steps)
    assert steps[1].detail == f"would create {tmp_path / 'remote-work'}"
    assert steps[2].detail.startswith("would run: npm install --global --prefix")
    assert not (tmp_path / "remote-work").exists() and not npm_log.exists()


def test_install_stops_at_a_failed_step_with_its_reason(sshd: SshServer, tmp_path: Path) -> None:
    """npm failing (a registry down, a bad version): the step fails with npm's last words."""
    sshd.install_cli("npm", 'echo "npm error 404 Not Found" >&2\nexit 1\n')
    settings = ssh_settings(sshd, tmp_path)
    steps = install_host(settings, settings.hosts[0])
    assert [(s.name, s.ok) for s in steps][-1] == ("agent CLI", False)
    assert "404 Not Found" in steps[-1].detail


def test_hosts_install_from_the_cli_reports_each_step(sshd: SshServer, tmp_path: Path) -> None:
    """The command prints a line per step and exits 0; an unreachable host exits 3."""
    sshd.install_cli("npm", f"NPM_LOG={tmp_path / 'npm.log'}\n" + FAKE_NPM)
    path = config_file(tmp_path)
    code, out = run(
        "hosts", "add", "gpu-02", "--ssh", f"{sshd.user}@{sshd.host}", "--port", str(sshd.port),
        "--workdir", str(tmp_path / "remote-work"), "--adapter", "codex",
        "--key-file", str(sshd.client_key), "--known-hosts-file", str(sshd.known_hosts),
        "--config", str(path),
    )  # fmt: skip
    assert code == 0, out
    text = path.read_text().replace(
        'workdir = "' + str(tmp_path / "remote-work") + '"',
        'workdir = "' + str(tmp_path / "remote-work") + f'"\ncli_prefix = "{tmp_path / "prefix"}"',
    )
    path.write_text(text)
    code, out = run("hosts", "install", "gpu-02", "--config", str(path))
    assert code == 0, out
    assert [line.split(":")[0].strip() for line in out.splitlines()[1:]] == [
        "ok  git", "ok  workdir", "ok  agent CLI",
    ]  # fmt: skip
    with sshd.stopped():
        code, out = run("hosts", "install", "gpu-02", "--config", str(path))
    assert code == 3, out
