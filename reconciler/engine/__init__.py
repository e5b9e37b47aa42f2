"""The reconcile engine: the controller contract, the work queue, the loop that runs keys
through controllers, the resync that finds keys nobody announced, metrics and logging.

It knows nothing of agents or runs: it imports neither ``reconciler.fleet`` nor ``reconciler.run``.
"""
