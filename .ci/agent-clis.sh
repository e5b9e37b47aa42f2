#!/usr/bin/env bash
# Installs the pinned agent CLIs the end-to-end tests run: Claude Code and Codex, from npm.
# Idempotent: does nothing when both binaries already report the pinned versions.
# Target directory: $AGENT_FLEET_CLI_DIR (default ~/.cache/agent-fleet/agent-clis); the tests
# look for DIR/node_modules/.bin/{claude,codex}. .ci/test calls this before running pytest.
set -euo pipefail

CLAUDE_VERSION=2.1.329
CODEX_VERSION=0.169.0
DIR="${AGENT_FLEET_CLI_DIR:-$HOME/.cache/agent-fleet/agent-clis}"
BIN="$DIR/node_modules/.bin"

# The version a binary reports, or nothing when it is missing or does not run.
reported() { "$BIN/$1" --version 2>/dev/null | head -n 1 || true; }

is_pinned() {
  [[ "$(reported claude)" == "$CLAUDE_VERSION (Claude Code)" ]] &&
    [[ "$(reported codex)" == "codex-cli $CODEX_VERSION" ]]
}

if is_pinned; then
  echo "==> agent CLIs: claude $CLAUDE_VERSION and codex $CODEX_VERSION already in $DIR"
  exit 0
fi

command -v npm >/dev/null || { echo "agent CLIs: npm is not installed (needs node >= 18)" >&2; exit 1; }

echo "==> agent CLIs: installing claude $CLAUDE_VERSION and codex $CODEX_VERSION into $DIR"
mkdir -p "$DIR"
# Exact versions: a bare package name has resolved to a stale release from the npm cache here.
# --foreground-scripts keeps postinstall output in the log should it fail.
npm install --prefix "$DIR" --no-audit --no-fund --loglevel=error --foreground-scripts \
  "@anthropic-ai/claude-code@$CLAUDE_VERSION" "@openai/codex@$CODEX_VERSION" >/dev/null

if ! is_pinned; then
  echo "agent CLIs: installed, but the binaries do not report the pinned versions:" >&2
  echo "  claude --version: '$(reported claude)' (want '$CLAUDE_VERSION (Claude Code)')" >&2
  echo "  codex --version:  '$(reported codex)' (want 'codex-cli $CODEX_VERSION')" >&2
  exit 1
fi
echo "==> agent CLIs: ready: $(reported claude), $(reported codex)"
