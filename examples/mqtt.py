"""Publish session logs to an MQTT broker: the seed's MQTT case with ``method="mqtt"``.

Run a broker (``mosquitto -p 1883``), a consumer (``python examples/mqtt_subscriber.py``), then:

    python examples/mqtt.py --host 127.0.0.1 --port 1883

Each entry is published as JSON on ``logs/<session_id>`` at QoS 1; the session's status
(``open``, then ``closed``) is retained on ``logs/<session_id>/status`` for consumers that connect
later. If the broker is down, entries wait in a bounded buffer and are sent when it is back.

Needs the ``[mqtt]`` extra (aiomqtt): ``pip install -e '.[mqtt]'`` (or ``'.[examples]'``) in a
checkout.
"""

import argparse
import logging

from async_session_logger import SessionLogger

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--port", type=int, default=1883)
parser.add_argument("--session", default="device-42")
parser.add_argument("--entries", type=int, default=3)
args = parser.parse_args()

logger = SessionLogger(method="mqtt", mqtt={"host": args.host, "port": args.port})

logger.start_session(args.session, metadata={"firmware": "1.4.2", "site": "lab"})
for i in range(args.entries):
    logger.log_entry(args.session, f"Reading {i}", logging.INFO, {"temperature_c": 20 + i})
logger.log_entry(args.session, "Battery low", logging.WARNING, {"battery_pct": 9})
logger.close_session(args.session)

report = logger.save_logs(timeout=30)  # waits until the broker acknowledged every entry
print(report)
logger.close()
