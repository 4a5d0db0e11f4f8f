"""Custom handlers: hand every entry, as a JSON line, to your own function (plain or async).

A plain handler runs on a worker thread of the logger, so a slow one never blocks your code; an
``async def`` handler is awaited, in order, on the logger's event loop (the place for an HTTP
POST, an MQTT publish or an email).
"""

import asyncio
import json
import logging

from async_session_logger import SessionLogger

received: list[str] = []


def handler(message: str) -> None:
    """Print each entry's JSON line with a prefix and keep it."""
    received.append(message)
    print("HANDLER:", message)


logger = SessionLogger(method="custom", custom_handler=handler)
logger.start_session("001")
logger.log_entry("001", "This goes to the handler.", logging.INFO)
logger.log_entry("001", "So does this warning.", logging.WARNING, {"custom_field": "custom_value"})
logger.close_session("001")
logger.save_logs()  # returns once the handler has been called for every entry
logger.close()
print(f"handler received {len(received)} entries")


async def async_handler(message: str) -> None:
    """Pretend to send the entry somewhere (an awaited I/O call), then print a summary of it."""
    await asyncio.sleep(0.01)
    entry = json.loads(message)
    where = f"{entry['session_id']} #{entry['seq']}"
    print(f"ASYNC HANDLER: {where} {entry['event']}: {entry['message']}")


async_logger = SessionLogger(method="custom", custom_handler=async_handler)
async_logger.start_session("002", metadata={"channel": "async"})
async_logger.log_entry("002", "Sent by an async handler.", logging.INFO)
async_logger.close_session("002")
async_logger.close()  # drains: every entry has been awaited by the handler
