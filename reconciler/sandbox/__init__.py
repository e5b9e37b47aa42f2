"""An in-memory Forgejo (the subset of the REST API agent-fleet uses), served by Bottle.

Tests and ``agent-fleet demo`` use ``ForgejoSandbox``; see ``docs/sandbox.md`` for what it
implements and what it does not.
"""

from reconciler.sandbox.hooks import Delivery, QueuedWebhook
from reconciler.sandbox.server import ForgejoSandbox

__all__ = ["Delivery", "ForgejoSandbox", "QueuedWebhook"]
