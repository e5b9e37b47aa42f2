"""Running a task: the executor interface, the ssh executor, host health, the agent CLI
adapters and the prompt.
"""
