"""The public surface: curated exports, typed package, optional dependencies kept optional."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import async_session_logger
import async_session_logger.sinks


def test_all_is_sorted_and_importable() -> None:
    """__all__ of the package, of sinks and of each integration is sorted; every name exists."""
    import async_session_logger.aiohttp
    import async_session_logger.asgi
    import async_session_logger.stdlib
    import async_session_logger.testing

    for module in (
        async_session_logger,
        async_session_logger.sinks,
        async_session_logger.stdlib,
        async_session_logger.asgi,
        async_session_logger.aiohttp,
        async_session_logger.testing,
    ):
        names = list(module.__all__)
        assert names == sorted(names, key=lambda n: (not n.isupper(), n))
        for name in names:
            assert hasattr(module, name), name


def test_error_tree() -> None:
    """Every public error derives from SessionLoggerError and a fitting stdlib class."""
    from async_session_logger import (
        ConfigurationError,
        InvalidFieldsError,
        InvalidSessionIdError,
        LoggerClosedError,
        SessionLoggerError,
        UnknownSessionError,
    )

    assert issubclass(InvalidSessionIdError, SessionLoggerError | ValueError)
    assert issubclass(UnknownSessionError, KeyError)
    assert issubclass(InvalidFieldsError, TypeError)
    assert issubclass(LoggerClosedError, RuntimeError)
    assert issubclass(ConfigurationError, ValueError)


def test_py_typed_marker_ships() -> None:
    """The package is marked as typed."""
    assert (Path(async_session_logger.__file__).parent / "py.typed").is_file()


def test_core_import_does_not_pull_optional_clients() -> None:
    """Importing the package, its sinks, the stdlib bridge, the ASGI middleware and the test
    helpers loads no optional client or framework (nor OpenTelemetry, nor pytest)."""
    optional = ("aiomqtt", "aiosmtplib", "paho", "aiohttp", "starlette", "fastapi", "opentelemetry")
    code = (
        "import sys, async_session_logger, async_session_logger.sinks\n"
        "import async_session_logger.stdlib, async_session_logger.asgi\n"
        "import async_session_logger.testing\n"
        f"print(sorted(m for m in {optional!r} + ('pytest',) if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_unknown_method_and_option_are_configuration_errors() -> None:
    """A misspelt method or keyword raises ConfigurationError naming the valid ones."""
    import pytest

    from async_session_logger import AsyncSessionLogger, ConfigurationError

    with pytest.raises(ConfigurationError, match="unknown method 'fiel'"):
        AsyncSessionLogger(method="fiel")
    with pytest.raises(ConfigurationError, match="unknown option"):
        AsyncSessionLogger(method="file", pth="x.jsonl")
    with pytest.raises(ConfigurationError, match="custom_handler"):
        AsyncSessionLogger(method="custom")


def test_replay_and_the_command_line_are_public_and_light() -> None:
    """replay_dead_letters/ReplayReport are exported; the CLI imports no network client."""
    assert {"ReplayReport", "replay_dead_letters"} <= set(async_session_logger.__all__)
    code = (
        "import sys, async_session_logger.cli\n"
        "async_session_logger.cli.build_parser()\n"
        "print(sorted(m for m in ('aiomqtt', 'aiosmtplib', 'paho') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_async_faces_defaults_are_the_engines() -> None:
    """AsyncSessionLogger spells out build_engine's keywords for its typed signature: the
    defaults must be the same, or the two faces would differ (SessionLogger passes **kwargs)."""
    import inspect

    from async_session_logger import AsyncSessionLogger
    from async_session_logger._config import build_engine

    face = inspect.signature(AsyncSessionLogger.__init__).parameters
    engine = inspect.signature(build_engine).parameters
    shared = [name for name in engine if name not in ("method", "custom_formatter", "options")]
    assert shared and all(name in face for name in shared)
    assert {n: face[n].default for n in shared} == {n: engine[n].default for n in shared}
