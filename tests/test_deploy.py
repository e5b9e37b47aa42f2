"""The deployment artifacts under ``config/`` and the Dockerfiles, each checked by the
validator its platform uses: ``systemd-analyze verify`` for the units, hadolint for the
Dockerfiles, the Compose specification (``compose-spec``) for the compose file,
``kubernetes-validate`` for the manifests, ``promtool`` for the alert rules. The configuration
each artifact ships is also loaded through the settings model with the secrets it supplies.

None of these can run here; the validators catch what would fail on the real platform. A
missing validator fails the test in CI (``CI=true``) and skips it elsewhere; ``.ci/test``
installs them all.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.engine.metrics import Metrics
from reconciler.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config"
SYSTEMD = CONFIG / "systemd"
KUBERNETES = CONFIG / "kubernetes"
COMPOSE = CONFIG / "compose"
PROMETHEUS = CONFIG / "prometheus"


def validator(name: str) -> str:
    """The path of a validator binary: fail in CI when it is missing, skip elsewhere."""
    found = shutil.which(name) or _beside_python(name)
    if found is None:
        message = f"{name} is not installed; `bash .ci/test` installs it"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def _beside_python(name: str) -> str | None:
    """Console scripts of pip packages installed for this interpreter but not on PATH."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else None


def run(argv: list[str], *, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        check=False,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of an environment file (comments and blanks skipped)."""
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


# --- systemd -------------------------------------------------------------------------------


def unit_settings(path: Path) -> dict[str, list[str]]:
    """Key → values of a unit file's [Service] section (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    values: dict[str, list[str]] = {}
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def verify_unit(unit: Path, tmp_path: Path, *, instance: str = "") -> None:
    """``systemd-analyze verify`` on a copy whose ExecStart is a stub: no output is allowed
    (it reports unknown keys and bad values as warnings with exit status 0)."""
    analyze = validator("systemd-analyze")
    stub = tmp_path / "bin" / "agent-fleet"
    stub.parent.mkdir(exist_ok=True)
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    name = unit.name.replace("@.", f"@{instance}.") if instance else unit.name
    copy = tmp_path / name
    copy.write_text(unit.read_text().replace("/usr/local/bin/agent-fleet", str(stub)))
    result = run([analyze, "verify", "--man=no", str(copy)], cwd=tmp_path)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        result.stdout + result.stderr
    )


def test_the_daemon_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """The daemon's unit is valid for systemd as written, apart from the binary's path."""
    verify_unit(SYSTEMD / "agent-fleet.service", tmp_path)


def test_the_worker_template_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """agent-fleet-worker@.service is a template: an instance of it is valid for systemd."""
    verify_unit(SYSTEMD / "agent-fleet-worker@.service", tmp_path, instance="dev1")


def test_the_unit_validator_rejects_a_misspelt_key(tmp_path: Path) -> None:
    """The check above can fail: a unit with a misspelt key does not pass."""
    bad = tmp_path / "src" / "agent-fleet.service"
    bad.parent.mkdir()
    bad.write_text((SYSTEMD / "agent-fleet.service").read_text().replace("Restart=", "Restat="))
    with pytest.raises(AssertionError, match="Unknown key 'Restat'"):
        verify_unit(bad, tmp_path)


@pytest.mark.parametrize("unit", ["agent-fleet.service", "agent-fleet-worker@.service"])
def test_each_unit_has_a_user_a_restart_policy_an_environment_file_and_hardening(
    unit: str,
) -> None:
    """What an operator expects of a service: a dedicated user, restarts, secrets from an
    environment file rather than the unit, and the sandboxing options."""
    service = unit_settings(SYSTEMD / unit)
    assert service["User"][0].startswith("agent-fleet")
    assert service["Restart"][0] in {"on-failure", "always"}
    assert any(path.startswith("/etc/agent-fleet/") for path in service["EnvironmentFile"])
    for option in ("NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp"):
        assert option in service, option
    assert service["ExecStart"][0].startswith("/usr/local/bin/agent-fleet ")
    assert "TOKEN" not in " ".join(service.get("Environment", []))  # secrets stay in the file


def test_the_worker_template_reads_every_variable_it_uses() -> None:
    """Each ${VAR} in the worker's ExecStart has a default in the unit or is in the example
    environment file, and the worker's secrets are there too."""
    service = unit_settings(SYSTEMD / "agent-fleet-worker@.service")
    defaults = {e.split("=", 1)[0] for e in service["Environment"]}
    example = env_file(SYSTEMD / "worker.env.example")
    used = set(re.findall(r"\$\{(\w+)\}", service["ExecStart"][0]))
    assert used and used <= defaults | set(example)
    assert {"AGENT_FLEET_WORKER_TOKEN", "AGENT_FLEET_WORKER_FORGEJO_TOKEN"} <= set(example)


def test_the_daemon_environment_example_holds_known_settings(tmp_path: Path) -> None:
    """Every variable of agent-fleet.env.example is a setting the daemon accepts."""
    config = tmp_path / "fleet.toml"
    config.write_text(
        '[forgejo]\nurl = "https://forgejo.example.org"\nbot_login = "bot"\n'
        "[store]\npath = '/var/lib/agent-fleet'\n"
    )
    settings = load_settings(config, env=env_file(SYSTEMD / "agent-fleet.env.example"))
    assert settings.forgejo.token.get_secret_value() == "change-me-forgejo-token"


# --- Dockerfiles ---------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.worker"])
def test_the_dockerfiles_pass_hadolint(dockerfile: str) -> None:
    """Both images lint clean (hadolint's default rules, warnings included)."""
    hadolint = validator("hadolint")
    result = run([hadolint, "--no-color", dockerfile], cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_rejects_an_unpinned_apt_install(tmp_path: Path) -> None:
    """The lint can fail: an apt-get install without versions is reported."""
    hadolint = validator("hadolint")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:12\nRUN apt-get update && apt-get install -y git\n")
    result = run([hadolint, "--no-color", str(bad)])
    assert result.returncode != 0 and "DL3008" in result.stdout


def test_the_worker_image_pins_the_agent_cli_versions_ci_tests() -> None:
    """The worker image installs exactly the Claude Code and Codex versions that
    .ci/agent-clis.sh pins for the end-to-end tests."""
    script = (ROOT / ".ci" / "agent-clis.sh").read_text()
    image = (ROOT / "Dockerfile.worker").read_text()
    for name in ("CLAUDE_VERSION", "CODEX_VERSION"):
        pinned = re.search(rf"^{name}=(\S+)$", script, re.MULTILINE)
        built = re.search(rf"^ARG {name}=(\S+)$", image, re.MULTILINE)
        assert pinned and built and pinned.group(1) == built.group(1), name


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.worker"])
def test_the_images_run_as_a_numeric_non_root_user(dockerfile: str) -> None:
    """Kubernetes' runAsNonRoot needs a numeric USER; the manifests use the same ids."""
    users = re.findall(r"^USER (\d+):(\d+)$", (ROOT / dockerfile).read_text(), re.MULTILINE)
    assert users and users[-1][0] != "0"


# --- docker compose ------------------------------------------------------------------------


def compose_file() -> dict[str, Any]:
    loaded = yaml.safe_load((COMPOSE / "compose.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_the_compose_file_follows_the_compose_specification() -> None:
    """compose.yaml parses under the Compose specification's models (unknown keys and wrong
    types are errors) with Forgejo, agent-fleet, one pull worker and Synapse."""
    try:
        from compose_spec import PyCompose
    except ImportError:
        validator("compose-spec (pip install compose-spec)")
        raise
    compose = PyCompose.from_yaml((COMPOSE / "compose.yaml").read_text())
    assert sorted(compose.service_names()) == ["agent-fleet", "forgejo", "synapse", "worker"]
    with pytest.raises(ValueError, match="restrat"):
        PyCompose.from_yaml(
            (COMPOSE / "compose.yaml").read_text().replace("restart:", "restrat:", 1)
        )


def test_the_compose_file_uses_the_official_images_and_builds_ours() -> None:
    """Forgejo and Synapse come from their official images; agent-fleet and the worker are
    built from this repository's Dockerfiles."""
    services = compose_file()["services"]
    assert services["forgejo"]["image"].startswith("codeberg.org/forgejo/forgejo:")
    assert services["synapse"]["image"].startswith("matrixdotorg/synapse:")
    assert services["agent-fleet"]["build"]["dockerfile"] == "Dockerfile"
    assert services["worker"]["build"]["dockerfile"] == "Dockerfile.worker"
    for name in ("agent-fleet", "worker"):
        assert (
            COMPOSE / services[name]["build"]["context"] / services[name]["build"]["dockerfile"]
        ).exists()
    hosts = services["forgejo"]["environment"]["FORGEJO__webhook__ALLOWED_HOST_LIST"]
    assert "private" in hosts


def test_the_compose_configuration_loads_with_the_secrets_compose_passes() -> None:
    """config/compose/fleet.toml with the environment compose gives agent-fleet is a valid
    configuration listening on all interfaces with its store on the volume."""
    service = compose_file()["services"]["agent-fleet"]
    example = env_file(COMPOSE / "fleet.env.example")
    env = {
        name: re.sub(r"\$\{(\w+)[^}]*\}", lambda m: example[m.group(1)], value)
        for name, value in service["environment"].items()
    }
    settings = load_settings(COMPOSE / "fleet.toml", env=env)
    assert settings.webhook.bind == "0.0.0.0"
    assert f"fleet-state:{settings.store.path}" in service["volumes"]
    port = f"{settings.webhook.port}:{settings.webhook.port}"
    assert port in service["ports"]


# --- Kubernetes ----------------------------------------------------------------------------


def manifests(name: str) -> dict[str, dict[str, Any]]:
    """kind/name → resource of one manifest file."""
    return {
        f"{doc['kind']}/{doc['metadata']['name']}": doc for doc in yaml_documents(KUBERNETES / name)
    }


@pytest.mark.parametrize("name", ["agent-fleet.yaml", "agent-fleet-worker.yaml"])
def test_the_kubernetes_manifests_validate_against_the_schemas(name: str) -> None:
    """Every resource validates strictly (unknown fields are errors) against Kubernetes'
    published schemas."""
    tool = validator("kubernetes-validate")
    result = run([tool, "--strict", "--quiet", str(KUBERNETES / name)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_validation_rejects_a_misspelt_field(tmp_path: Path) -> None:
    """The schema check can fail: a misspelt field in a pod spec is reported."""
    tool = validator("kubernetes-validate")
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        (KUBERNETES / "agent-fleet-worker.yaml")
        .read_text()
        .replace("terminationGracePeriodSeconds", "terminationGracePeriodSecond")
    )
    result = run([tool, "--strict", "--quiet", str(bad)])
    assert result.returncode != 0 and "terminationGracePeriodSecond" in result.stdout


def test_the_daemon_runs_as_one_replica_replaced_by_recreate_with_probes() -> None:
    """One daemon per state store: replicas 1, Recreate; its state on the claim; liveness on
    /healthz and readiness on /readyz; the Service reaches the container's port."""
    found = manifests("agent-fleet.yaml")
    deployment = found["Deployment/agent-fleet"]["spec"]
    assert deployment["replicas"] == 1 and deployment["strategy"]["type"] == "Recreate"
    pod = deployment["template"]["spec"]
    container = pod["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert claims == ["agent-fleet-state"] and "PersistentVolumeClaim/agent-fleet-state" in found
    assert container["envFrom"][0]["secretRef"]["name"] == "agent-fleet"
    assert "Secret/agent-fleet" in found
    service = found["Service/agent-fleet"]["spec"]
    assert service["selector"] == deployment["template"]["metadata"]["labels"]
    assert service["ports"][0]["targetPort"] == container["ports"][0]["name"]


def test_the_daemon_configmap_loads_with_the_secret() -> None:
    """The ConfigMap's fleet.toml and the Secret's variables are a valid configuration whose
    port and store path match the container's port and volume mount."""
    found = manifests("agent-fleet.yaml")
    text = found["ConfigMap/agent-fleet"]["data"]["fleet.toml"]
    tomllib.loads(text)
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"agent-fleet-k8s-{os.getpid()}.toml"
    path.write_text(text)
    try:
        settings = load_settings(path, env=found["Secret/agent-fleet"]["stringData"])
    finally:
        path.unlink()
    container = found["Deployment/agent-fleet"]["spec"]["template"]["spec"]["containers"][0]
    assert container["ports"][0]["containerPort"] == settings.webhook.port
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["state"] == str(settings.store.path)


def test_workers_scale_by_replicas_and_stop_gracefully() -> None:
    """The workers' Deployment: replicas is the knob, each pod is an agent named after it,
    and the grace period leaves time to hand tasks back and deliver receipts."""
    found = manifests("agent-fleet-worker.yaml")
    spec = found["Deployment/agent-fleet-worker"]["spec"]
    assert spec["replicas"] >= 1
    pod = spec["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= 60
    args = pod["containers"][0]["args"]
    assert args[args.index("--agent-id") + 1] == "$(POD_NAME)"
    assert set(found["Secret/agent-fleet-worker"]["stringData"]) >= {
        "AGENT_FLEET_WORKER_TOKEN",
        "AGENT_FLEET_WORKER_FORGEJO_TOKEN",
    }


# --- Prometheus ----------------------------------------------------------------------------


def test_the_alert_rules_pass_promtool_and_their_unit_tests() -> None:
    """promtool accepts the rules, and its unit tests (alerts firing on made-up series) pass."""
    promtool = validator("promtool")
    checked = run([promtool, "check", "rules", "agent-fleet-rules.yaml"], cwd=PROMETHEUS)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = run([promtool, "test", "rules", "agent-fleet-rules.test.yaml"], cwd=PROMETHEUS)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_alert_rules_name_only_metrics_the_daemon_exports() -> None:
    """Every agent_fleet_* series an alert reads is in the daemon's /metrics output."""
    metrics = Metrics()
    metrics.reconciles.labels(controller="assignment", outcome="error").inc()
    metrics.count_forgejo_call("issues.list", 200)
    metrics.count_webhook("issues", "accepted")
    metrics.last_resync.labels(kind="incremental").set(1)
    metrics.agents.labels(status="online").set(1)
    exported = set(re.findall(r"^(agent_fleet_\w+)", metrics.render().decode(), re.MULTILINE))
    rules = yaml.safe_load((PROMETHEUS / "agent-fleet-rules.yaml").read_text())
    used = {
        name
        for group in rules["groups"]
        for rule in group["rules"]
        for name in re.findall(r"agent_fleet_\w+", rule["expr"])
    }
    assert used and used <= exported, used - exported


def test_metrics_carry_no_created_series() -> None:
    """/metrics drops prometheus_client's ``*_created`` series, keeping every real one."""
    metrics = Metrics()
    metrics.reconciles.labels(controller="assignment", outcome="ok").inc()
    metrics.reconcile_duration.labels(controller="assignment").observe(0.2)
    text = metrics.render().decode()
    assert "_created" not in text
    assert 'agent_fleet_reconciles_total{controller="assignment",outcome="ok"} 1.0' in text
    assert "# TYPE agent_fleet_reconcile_duration_seconds histogram" in text
    assert 'agent_fleet_reconcile_duration_seconds_count{controller="assignment"} 1.0' in text
