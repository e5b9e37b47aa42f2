"""``python -m webhook`` is the same as the ``agent-fleet`` command (for a checkout without the
console script installed)."""

from webhook.cli import main

main()
