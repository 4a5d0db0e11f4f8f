"""examples/email_alerts.py --demo: the seed's email case, mailed to a local aiosmtpd server."""

from __future__ import annotations

import re
from pathlib import Path

from .test_examples import EXAMPLES, run_python

EXPECTED = """\
--- mail 1: from logger@example.com to ops@example.com
Subject: [ERROR] 1 alert(s), first in session 002
ALERTS (1)

  <ts>  ERROR     [002] Payment declined  {"code":"card_declined"}

The attachment alerts.jsonl holds the listed alerts (JSON Lines).
[attachment alerts.jsonl: 1 JSON lines]
--- mail 2: from logger@example.com to ops@example.com
Subject: [error] session 002
Session 002: status error, <d> s, 2 entries, 1 at ERROR or worse
Levels: INFO 1, ERROR 1
Metadata: {"user_id":"u-42"}

  <ts>  INFO      Session started
  <ts>  INFO      Checkout started  {"cart_items":1}
  <ts>  ERROR     Payment declined  {"code":"card_declined"}
  <ts>  ERROR     Session closed

The attachment 002.jsonl holds 4 entries (JSON Lines).
[attachment 002.jsonl: 4 JSON lines]
--- 2 mails sent, 0 entries undelivered
"""


def test_email_example_demo_mails_one_alert_and_one_digest(tmp_path: Path) -> None:
    """--demo: the ERROR is alerted, the failed session digested, the clean one not mailed."""
    result = run_python([str(EXAMPLES / "email_alerts.py"), "--demo"], tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", "<ts>", result.stdout)
    text = re.sub(r"status error, \d+\.\d{3} s", "status error, <d> s", text)
    assert text == EXPECTED
    assert list(tmp_path.iterdir()) == []  # nothing dead-lettered, no log file
