"""``python -m async_session_logger``: the same as the ``async-session-logger`` command."""

from .cli import main

raise SystemExit(main())
