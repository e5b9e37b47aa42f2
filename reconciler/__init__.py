"""agent-fleet's engine: settings, models, state store, Forgejo gateway, and (later) the loop.

Layering: ``webhook`` → ``controllers`` → ``reconciler``. Nothing in this package imports
``controllers`` or ``webhook``.
"""

__version__ = "0.1.0"
