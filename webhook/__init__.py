"""The HTTP surface: Forgejo webhook receiver, agent API, health and metrics (Bottle).

The webhook receiver enqueues keys and returns; it never calls Forgejo.
"""
