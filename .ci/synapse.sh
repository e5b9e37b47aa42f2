#!/usr/bin/env bash
# Installs the pinned Synapse homeserver the Matrix tests run, into its own virtualenv so its
# pins never fight the project's. Idempotent: does nothing when the venv already reports the
# pinned version. Target: $AGENT_FLEET_SYNAPSE_DIR (default ~/.cache/agent-fleet/synapse); the
# tests start DIR/bin/python -m synapse.app.homeserver. .ci/test calls this before pytest.
set -euo pipefail

SYNAPSE_VERSION=1.163.2
DIR="${AGENT_FLEET_SYNAPSE_DIR:-$HOME/.cache/agent-fleet/synapse}"

# The version the venv's Synapse reports, or nothing when it is missing or does not import.
reported() { "$DIR/bin/python" -c 'import synapse; print(synapse.__version__)' 2>/dev/null || true; }

if [[ "$(reported)" == "$SYNAPSE_VERSION" ]]; then
  echo "==> synapse: $SYNAPSE_VERSION already in $DIR"
  exit 0
fi

echo "==> synapse: installing matrix-synapse $SYNAPSE_VERSION into $DIR"
python3 -m venv "$DIR"
"$DIR/bin/python" -m pip install --quiet --disable-pip-version-check \
  "matrix-synapse==$SYNAPSE_VERSION"

if [[ "$(reported)" != "$SYNAPSE_VERSION" ]]; then
  echo "synapse: installed, but the venv reports '$(reported)' (want '$SYNAPSE_VERSION')" >&2
  exit 1
fi
echo "==> synapse: ready: $SYNAPSE_VERSION in $DIR"
