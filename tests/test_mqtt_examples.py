"""examples/mqtt.py publishes to a real mosquitto; examples/mqtt_subscriber.py consumes it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .mqtt_broker import Broker

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_mqtt_example_and_its_subscriber(tmp_path: Path) -> None:
    """The publisher's session reaches the subscriber example: entries, statuses, done line."""
    with Broker(workdir=tmp_path / "broker") as broker:
        consumer = subprocess.Popen(
            [
                sys.executable,
                str(EXAMPLES / "mqtt_subscriber.py"),
                "--port",
                str(broker.port),
                "--exit-after-close",
                "1",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert consumer.stdout is not None
        assert consumer.stdout.readline().strip() == "subscribed"
        publisher = subprocess.run(
            [sys.executable, str(EXAMPLES / "mqtt.py"), "--port", str(broker.port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert publisher.returncode == 0, publisher.stderr
        assert publisher.stdout.strip() == "ok: 6 accepted; mqtt: 6 delivered"
        out, err = consumer.communicate(timeout=30)
        assert consumer.returncode == 0, err
    # Each status message follows the entry that changed it (start, then close).
    assert out.splitlines() == [
        "device-42 #0 INFO Session started {}",
        "STATUS device-42: open",
        'device-42 #1 INFO Reading 0 {"temperature_c": 20}',
        'device-42 #2 INFO Reading 1 {"temperature_c": 21}',
        'device-42 #3 INFO Reading 2 {"temperature_c": 22}',
        'device-42 #4 WARNING Battery low {"battery_pct": 9}',
        "device-42 #5 INFO Session closed {}",
        "done: 6 entries, 0 duplicates dropped",
    ]
