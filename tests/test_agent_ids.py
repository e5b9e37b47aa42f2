"""Agent ids are compared by a canonical form, so an id that only looks like an ssh host's or
an existing agent's (case, a trailing dot, _ for -) is refused at registration."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.errors import ConflictError
from reconciler.fleet.records import canonical_agent_id
from reconciler.settings import HostSettings
from tests.test_fleet import Harness, make_settings


def build_host(tmp_path: Path) -> HostSettings:
    return HostSettings(
        name="build-01",
        address="localhost",
        adapter="claude-code",
        workdir=str(tmp_path / "work"),
        roles=("developer",),
    )


@pytest.mark.parametrize("look_alike", ["BUILD-01", "build-01.", "Build_01", "build-01.."])
def test_a_pull_agent_named_like_an_ssh_host_is_refused(tmp_path: Path, look_alike: str) -> None:
    """An id equal to an ssh host's but for case, trailing dots or _ is a 409 conflict."""
    harness = Harness(tmp_path, make_settings(hosts=(build_host(tmp_path),)))
    try:
        with pytest.raises(ConflictError) as refused:
            harness.register(look_alike)
        assert refused.value.code == "agent_id_conflict"
        assert "build-01" in str(refused.value)
    finally:
        harness.close()


def test_an_id_that_looks_like_an_existing_agent_is_refused(tmp_path: Path) -> None:
    """With ``worker-a`` registered, ``Worker-A`` and ``worker_a.`` are refused, while the
    exact id registers again and an unrelated id is fine."""
    harness = Harness(tmp_path)
    try:
        first = harness.register("worker-a")
        for look_alike in ("Worker-A", "worker_a.", "WORKER-A."):
            with pytest.raises(ConflictError):
                harness.register(look_alike)
        again = harness.register("worker-a", credential=first.token)
        assert not again.created
        assert harness.register("worker-b").created
        assert sorted(a.id for a in harness.store.list_agents()) == ["worker-a", "worker-b"]
    finally:
        harness.close()


def test_the_canonical_form_folds_case_trailing_dots_and_underscores() -> None:
    """The comparison the registry uses, spelled out."""
    assert {canonical_agent_id(i) for i in ("Build_01.", "build-01", "BUILD-01..")} == {"build-01"}
    assert canonical_agent_id("build-01") != canonical_agent_id("build-1")
