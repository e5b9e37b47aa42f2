"""``python -m reconciler`` is the same as the ``agent-fleet`` command."""

from reconciler.cli import main

main()
