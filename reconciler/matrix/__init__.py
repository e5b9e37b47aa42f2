"""Matrix ChatOps: what the fleet room sees, how it gets there, and the !fleet commands.

* :mod:`~reconciler.matrix.format` — the text of every message (pure).
* :mod:`~reconciler.matrix.notifier` — turns task events and agent changes into outbox messages.
* :mod:`~reconciler.matrix.delivery` — drains the outbox to the homeserver, exactly once as seen.
* :mod:`~reconciler.matrix.commands` — parses and runs ``!fleet`` commands through the gateway.
* :mod:`~reconciler.matrix.client` — the Matrix thread (its own asyncio loop) the daemon starts.
* :mod:`~reconciler.matrix.preview` — the room as it would look, for ``agent-fleet demo``.
"""
