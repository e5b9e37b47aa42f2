"""What the command line prints: answer models read from the daemon, tables and histories.

It writes nothing.
"""
