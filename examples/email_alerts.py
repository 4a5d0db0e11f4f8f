"""Email session errors: the seed's email case with ``method="smtp"``.

The seed mailed every ERROR or CRITICAL entry through a custom handler, one SMTP connection per
entry. ``method="smtp"`` does the same job without spamming: each ERROR is an alert mailed
promptly (rate-limited), and each failed session gets one digest with its JSON Lines attached.

    python examples/email_alerts.py --demo      # runs a local SMTP server and prints what it gets
    python examples/email_alerts.py --host smtp.example.com --port 587 --starttls \\
        --user me --password-env SMTP_PASSWORD --sender logger@example.com --to ops@example.com

Needs the ``[smtp]`` extra (aiosmtplib); ``--demo`` also needs aiosmtpd. From a checkout,
``pip install -e '.[examples]'`` installs both.
"""

import argparse
import logging
import os
import socket
from typing import Any

from async_session_logger import SessionLogger

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--demo", action="store_true", help="start a local aiosmtpd server")
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--port", type=int, default=25)
parser.add_argument("--starttls", action="store_true", help="require STARTTLS")
parser.add_argument("--user")
parser.add_argument("--password-env", help="name of the environment variable with the password")
parser.add_argument("--sender", default="logger@example.com")
parser.add_argument("--to", action="append", default=None, help="recipient (repeatable)")
args = parser.parse_args()


class PrintMail:
    """An aiosmtpd handler that prints each mail it receives."""

    def __init__(self) -> None:
        self.count = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        """Print the envelope, subject, body and attachments; accept the mail."""
        import email
        from email import policy

        self.count += 1
        msg = email.message_from_bytes(envelope.content, policy=policy.default)
        rcpts = ", ".join(envelope.rcpt_tos)
        print(f"--- mail {self.count}: from {envelope.mail_from} to {rcpts}")
        print(f"Subject: {msg['Subject']}")
        print(msg.get_body(("plain",)).get_content().replace("\r\n", "\n").rstrip())
        for part in msg.iter_attachments():
            lines = part.get_content().splitlines()
            print(f"[attachment {part.get_filename()}: {len(lines)} JSON lines]")
        return "250 OK"


controller = None
if args.demo:
    try:
        from aiosmtpd.controller import Controller  # only the demo needs a server
    except ImportError as exc:
        raise SystemExit(
            f"--demo needs aiosmtpd ({exc}): pip install -e '.[examples]' in a checkout"
        ) from exc

    with socket.socket() as probe:  # aiosmtpd 1.4 cannot listen on port 0: pick a free port
        probe.bind(("127.0.0.1", 0))
        args.host, args.port = "127.0.0.1", probe.getsockname()[1]
    controller = Controller(PrintMail(), hostname=args.host, port=args.port)
    controller.start()

logger = SessionLogger(
    method="smtp",
    smtp={
        "host": args.host,
        "port": args.port,
        "sender": args.sender,
        "recipients": args.to or ["ops@example.com"],
        "username": args.user,
        "password": os.environ.get(args.password_env) if args.password_env else None,
        "start_tls": True if args.starttls else None,
        "alert_level": logging.ERROR,  # like the seed's handler: ERROR and CRITICAL entries
        "digest_on": "error",  # and one digest per session that failed
    },
)

logger.start_session("001", metadata={"user_id": "u-17"})
logger.log_entry("001", "Checkout started", logging.INFO, {"cart_items": 3})
logger.close_session("001")  # nothing failed: no mail

logger.start_session("002", metadata={"user_id": "u-42"})
logger.log_entry("002", "Checkout started", logging.INFO, {"cart_items": 1})
logger.log_entry("002", "Payment declined", logging.ERROR, {"code": "card_declined"})
logger.close_session("002", status="error")

report = logger.close()  # mails what is pending, within the close timeout
details = report["smtp"].details
print(f"--- {details['mails_sent']} mails sent, {report['smtp'].dead_lettered} entries undelivered")
if controller is not None:
    controller.stop()
