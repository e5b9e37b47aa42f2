"""The pull worker (``agent-fleet agent run``): a machine that takes tasks from the daemon's
agent API, and the deterministic demo agent.
"""
