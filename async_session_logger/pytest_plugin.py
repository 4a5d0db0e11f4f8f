"""The pytest plugin (entry point ``pytest11``): the ``session_log`` fixture."""
