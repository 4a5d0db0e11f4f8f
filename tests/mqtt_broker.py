"""Run real mosquitto brokers and an independent mosquitto_sub verifier for MQTT tests."""

from __future__ import annotations

import asyncio
import atexit
import json
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import trustme

__all__ = [
    "Broker",
    "BrokerError",
    "Message",
    "PROBE_PREFIX",
    "Subscriber",
    "SubscriberError",
    "free_port",
    "mosquitto_binary",
    "mosquitto_pub",
    "running_broker",
    "running_subscriber",
]

HOST = "127.0.0.1"
# Readiness probes travel on their own topic tree so they never land in a filter under test.
PROBE_PREFIX = "__probe__/"
# mosquitto_sub's -F: retain, QoS, topic, hex payload. Hex keeps multi-line and binary payloads on
# one output line, so one line is exactly one message.
_SUB_FORMAT = "%r\t%q\t%t\t%x"
_POLL = 0.02
# Logged once every listener is bound, so a port held by a stranger is not mistaken for ours.
_RUNNING_LINE = re.compile(r"mosquitto version \S+ running$", re.MULTILINE)

# Children still running when the interpreter exits (a test that forgot to stop) are killed here.
_LIVE: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_LIVE):
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _LIVE.clear()


def _binary(name: str, *fallback_dirs: str) -> str:
    """Return the path of a mosquitto tool, looking beyond PATH where Debian installs it."""
    found = shutil.which(name)
    if found:
        return found
    for directory in fallback_dirs:
        candidate = Path(directory) / name
        if candidate.exists():
            return str(candidate)
    raise FileNotFoundError(f"{name} not found on PATH nor in {', '.join(fallback_dirs)}")


def mosquitto_binary() -> str:
    """Return the mosquitto broker binary (often /usr/sbin/mosquitto, not on every PATH)."""
    return _binary("mosquitto", "/usr/sbin", "/usr/local/sbin")


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
    return port


def _port_open(port: int) -> bool:
    """Tell whether something accepts TCP connections on the loopback port."""
    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


def _read_text(path: Path) -> str:
    """Return a file's text, or an empty string if it does not exist yet."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def _terminate(proc: subprocess.Popen[bytes], sig: int, timeout: float = 5.0) -> None:
    """Send a signal to a child and reap it, escalating to SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    _LIVE.discard(proc)


def _client_args(
    port: int,
    *,
    username: str | None,
    password: str | None,
    cafile: str | Path | None,
) -> list[str]:
    """Build the connection options shared by mosquitto_sub and mosquitto_pub."""
    args = ["-h", HOST, "-p", str(port)]
    if username is not None:
        args += ["-u", username]
    if password is not None:
        args += ["-P", password]
    if cafile is not None:
        args += ["--cafile", str(cafile)]
    return args


def mosquitto_pub(
    port: int,
    topic: str,
    payload: bytes | str,
    *,
    qos: int = 1,
    retain: bool = False,
    username: str | None = None,
    password: str | None = None,
    cafile: str | Path | None = None,
    timeout: float = 5.0,
) -> None:
    """Publish one message with the mosquitto_pub CLI, raising if it fails."""
    data = payload.encode() if isinstance(payload, str) else payload
    cmd = [_binary("mosquitto_pub", "/usr/bin"), "-t", topic, "-q", str(qos), "-s"]
    cmd += _client_args(port, username=username, password=password, cafile=cafile)
    if retain:
        cmd.append("-r")
    # -s reads the payload from stdin, so any bytes (newlines, NUL) go through unchanged.
    done = subprocess.run(cmd, input=data, capture_output=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"mosquitto_pub to {topic!r} on port {port} failed ({done.returncode}): "
            f"{done.stderr.decode(errors='replace').strip()}"
        )


class BrokerError(RuntimeError):
    """The broker would not start or do what it was asked."""


class Broker:
    """Run a real mosquitto child process on a stable loopback port with a generated config."""

    def __init__(
        self,
        *,
        port: int | None = None,
        users: Mapping[str, str] | None = None,
        tls: bool = False,
        persistence: bool = False,
        autosave_interval: int | None = None,
        max_queued_messages: int = 0,
        max_packet_size: int | None = None,
        extra_config: tuple[str, ...] = (),
        workdir: Path | None = None,
    ) -> None:
        """Write the config (and TLS/password files) for a broker; do not start it yet."""
        self.host = HOST
        self.port = port if port is not None else free_port()
        self.users = dict(users or {})
        self.persistence = persistence
        self._owns_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="mosquitto-")) if workdir is None else workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "mosquitto.conf"
        self.log_path = self.workdir / "mosquitto.log"
        # stdout/stderr catch what mosquitto prints before its log file is open (bad config, bind).
        self.output_path = self.workdir / "mosquitto.out"
        self.db_path = self.workdir / "mosquitto.db"
        self.password_path: Path | None = None
        self.ca: trustme.CA | None = None
        self.ca_pem_path: Path | None = None
        self.tls_port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None

        lines = [
            f"listener {self.port} {HOST}",
            # As root mosquitto would switch to user mosquitto and lose access to this temp dir.
            "user root",
            # The default of 1000 silently drops acknowledged QoS 1 messages for slow clients.
            f"max_queued_messages {max_queued_messages}",
            f"log_dest file {self.log_path}",
            "log_type all",
        ]
        if self.users:
            self.password_path = self.workdir / "passwd"
            self._write_passwords(self.password_path)
            lines += [f"password_file {self.password_path}", "allow_anonymous false"]
        else:
            lines.append("allow_anonymous true")
        if persistence:
            lines += ["persistence true", f"persistence_location {self.workdir}/"]
            if autosave_interval is not None:
                lines.append(f"autosave_interval {autosave_interval}")
        if max_packet_size is not None:
            # Larger packets make mosquitto drop the connection; v5 clients learn it in CONNACK.
            lines.append(f"max_packet_size {max_packet_size}")
        if tls:
            lines += self._write_tls()
        lines += extra_config
        self.config_path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def _write_passwords(self, path: Path) -> None:
        """Create the mosquitto password file for every configured user."""
        tool = _binary("mosquitto_passwd", "/usr/bin")
        for index, (user, password) in enumerate(self.users.items()):
            # -c creates the file: only for the first user, or it would erase the others.
            create = ["-c"] if index == 0 else []
            subprocess.run(
                [tool, "-b", *create, str(path), user, password], check=True, capture_output=True
            )

    def _write_tls(self) -> list[str]:
        """Make a CA and a 127.0.0.1/localhost server cert; return the TLS listener config."""
        self.ca = trustme.CA()
        server = self.ca.issue_cert(HOST, "localhost")
        self.ca_pem_path = self.workdir / "ca.pem"
        cert_path = self.workdir / "server.pem"
        key_path = self.workdir / "server.key"
        self.ca.cert_pem.write_to_path(str(self.ca_pem_path))
        cert_path.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
        server.private_key_pem.write_to_path(str(key_path))
        self.tls_port = free_port()
        return [
            f"listener {self.tls_port} {HOST}",
            f"cafile {self.ca_pem_path}",
            f"certfile {cert_path}",
            f"keyfile {key_path}",
        ]

    def client_ssl_context(self) -> ssl.SSLContext:
        """Return a client SSL context that trusts this broker's test CA."""
        if self.ca is None:
            raise BrokerError("broker was created without tls=True")
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context

    @property
    def pid(self) -> int | None:
        """Return the broker's process id while it runs."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        """Tell whether the broker process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def log_text(self) -> str:
        """Return the broker's log file (all log types, every run appended)."""
        return _read_text(self.log_path)

    def output_text(self) -> str:
        """Return the broker's stdout/stderr (config errors found before its log file opens)."""
        return _read_text(self.output_path)

    def _ports(self) -> list[int]:
        return [self.port] if self.tls_port is None else [self.port, self.tls_port]

    def _launch(self) -> subprocess.Popen[bytes]:
        with open(self.output_path, "ab") as out:
            proc = subprocess.Popen(
                [mosquitto_binary(), "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        _LIVE.add(proc)
        return proc

    def start(self, timeout: float = 5.0) -> Self:
        """Start mosquitto and wait until every listener accepts TCP connections."""
        if self.running:
            raise BrokerError(f"broker on port {self.port} is already running")
        deadline = time.monotonic() + timeout
        # A port lingering after a kill frees up within moments; one held by a stranger never does.
        bind_deadline = time.monotonic() + 1.0
        while True:
            log_before = len(self.log_text())
            runs_before = len(_RUNNING_LINE.findall(self.log_text()))
            proc = self._proc = self._launch()
            while proc.poll() is None and time.monotonic() < deadline:
                if len(_RUNNING_LINE.findall(self.log_text())) > runs_before and all(
                    _port_open(port) for port in self._ports()
                ):
                    return self
                time.sleep(_POLL)
            address_in_use = "Address already in use" in self.log_text()[log_before:]
            retrying = time.monotonic() < min(deadline, bind_deadline)
            if proc.poll() is not None and address_in_use and retrying:
                # The previous run's socket may linger for a moment after a kill: try again.
                _LIVE.discard(proc)
                time.sleep(0.1)
                continue
            exited = proc.poll() is not None
            _terminate(proc, signal.SIGKILL)
            what = f"exited with {proc.returncode}" if exited else f"not ready within {timeout} s"
            raise BrokerError(
                f"mosquitto on port {self.port} {what}\n--- output ---\n{self.output_text()}"
                f"\n--- log ---\n{self.log_text()}"
            )

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the broker gracefully (SIGTERM; it saves its database if persistent)."""
        if self._proc is not None:
            _terminate(self._proc, signal.SIGTERM, timeout)

    def kill(self) -> None:
        """Kill the broker abruptly (SIGKILL): nothing unsaved survives."""
        if self._proc is not None:
            _terminate(self._proc, signal.SIGKILL)

    def restart(self, timeout: float = 5.0) -> Self:
        """Start the broker again on the same ports and config, stopping it first if running."""
        self.stop()
        return self.start(timeout)

    def save(self, timeout: float = 5.0) -> None:
        """Make the broker write its persistence database now (SIGUSR1) and wait for the file."""
        if not self.persistence:
            raise BrokerError("broker was created without persistence=True")
        if self._proc is None or not self.running:
            raise BrokerError("broker is not running")

        def stamp() -> tuple[int, int, int] | None:
            try:
                st = self.db_path.stat()
            except FileNotFoundError:
                return None
            return (st.st_ino, st.st_mtime_ns, st.st_size)

        before = stamp()
        self._proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        # mosquitto writes mosquitto.db.new and renames it, so a changed stat means a full file.
        while stamp() in (before, None):
            if time.monotonic() > deadline:
                raise BrokerError(f"no database saved within {timeout} s\n{self.log_text()}")
            time.sleep(_POLL)

    def subscriber(
        self,
        topic: str = "logs/#",
        *,
        tls: bool = False,
        user: str | None = None,
        **options: Any,
    ) -> Subscriber:
        """Return a (not started) Subscriber wired to this broker's port, credentials and TLS."""
        if self.users:
            user = user if user is not None else next(iter(self.users))
            options.setdefault("username", user)
            options.setdefault("password", self.users[user])
        if tls:
            if self.tls_port is None:
                raise BrokerError("broker was created without tls=True")
            options.setdefault("tls_port", self.tls_port)
            options.setdefault("cafile", self.ca_pem_path)
        return Subscriber(self.port, topic, **options)

    def close(self) -> None:
        """Stop the broker and remove its temp dir if this object created it."""
        self.stop()
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Broker(port={self.port}, tls_port={self.tls_port}, running={self.running})"


@dataclass(frozen=True, slots=True)
class Message:
    """One message as mosquitto_sub received it."""

    topic: str
    payload: bytes
    qos: int
    retain: bool


class SubscriberError(RuntimeError):
    """The verifying subscriber failed or did not see what was expected in time."""


class Subscriber:
    """Record every message on a topic filter with an independent mosquitto_sub process."""

    def __init__(
        self,
        port: int,
        topic: str = "logs/#",
        *,
        qos: int = 1,
        client_id: str | None = None,
        clean: bool = True,
        username: str | None = None,
        password: str | None = None,
        cafile: str | Path | None = None,
        tls_port: int | None = None,
        workdir: Path | None = None,
    ) -> None:
        """Prepare a subscriber (TLS on tls_port when given, else plain on port); do not start."""
        self.port = port
        self.topic = topic
        self.qos = qos
        self.clean = clean
        # A persistent session is found again by its client id, so it must be fixed up front.
        self.client_id = client_id or (None if clean else f"verifier-{uuid.uuid4().hex[:8]}")
        self.username = username
        self.password = password
        self.cafile = cafile
        self.tls_port = tls_port
        self._owns_workdir = workdir is None
        self.workdir = (
            Path(tempfile.mkdtemp(prefix="mosquitto-sub-")) if workdir is None else workdir
        )
        self.workdir.mkdir(parents=True, exist_ok=True)
        tag = uuid.uuid4().hex[:12]
        self.output_path = self.workdir / f"sub-{tag}.out"
        self.error_path = self.workdir / f"sub-{tag}.err"
        self.probe_topic = f"{PROBE_PREFIX}{tag}"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def connect_port(self) -> int:
        """Return the port mosquitto_sub connects to (the TLS one when configured)."""
        return self.tls_port if self.tls_port is not None else self.port

    @property
    def running(self) -> bool:
        """Tell whether the mosquitto_sub process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def _conn_args(self) -> list[str]:
        return _client_args(
            self.connect_port, username=self.username, password=self.password, cafile=self.cafile
        )

    def _command(self) -> list[str]:
        cmd = [_binary("mosquitto_sub", "/usr/bin"), *self._conn_args(), "-q", str(self.qos)]
        # The probe filter comes last in the same SUBSCRIBE, so a probe received proves the
        # filter under test is active too.
        cmd += ["-t", self.topic, "-t", self.probe_topic, "-F", _SUB_FORMAT]
        if self.client_id is not None:
            cmd += ["-i", self.client_id]
        if not self.clean:
            cmd.append("-c")
        return cmd

    def start(self, timeout: float = 5.0) -> Self:
        """Start mosquitto_sub and return once a probe message proves the subscription live."""
        if self.running:
            raise SubscriberError("subscriber is already running")
        # Output goes to a file: a pipe read only at the end fills at 64 KiB and stalls the client.
        with open(self.output_path, "ab") as out, open(self.error_path, "ab") as err:
            self._proc = subprocess.Popen(
                self._command(), stdin=subprocess.DEVNULL, stdout=out, stderr=err
            )
        _LIVE.add(self._proc)
        nonce = uuid.uuid4().hex.encode()
        deadline = time.monotonic() + timeout
        next_probe = 0.0
        while True:
            if any(m.payload == nonce for m in self.records(include_probes=True)):
                return self
            if self._proc.poll() is not None:
                raise SubscriberError(
                    f"mosquitto_sub exited with {self._proc.returncode}: {self.error_text()}"
                )
            now = time.monotonic()
            if now > deadline:
                self.stop()
                raise SubscriberError(
                    f"subscription to {self.topic!r} not live within {timeout} s: "
                    f"{self.error_text()}"
                )
            if now >= next_probe:
                # Probes sent before the SUBACK are dropped by the broker, so keep sending.
                try:
                    mosquitto_pub(
                        self.connect_port,
                        self.probe_topic,
                        nonce,
                        qos=1,
                        username=self.username,
                        password=self.password,
                        cafile=self.cafile,
                        timeout=max(deadline - now, 0.1),
                    )
                except (RuntimeError, subprocess.TimeoutExpired):
                    pass
                next_probe = now + 0.1
            time.sleep(_POLL)

    def stop(self) -> None:
        """Stop mosquitto_sub (a persistent session stays on the broker)."""
        if self._proc is not None:
            _terminate(self._proc, signal.SIGTERM)

    def restart(self, timeout: float = 5.0) -> Self:
        """Start a fresh mosquitto_sub with the same options, appending to the same output."""
        self.stop()
        return self.start(timeout)

    def resubscribe(self, timeout: float = 5.0) -> Self:
        """Subscribe again after a broker restart, returning once the subscription is live."""
        # mosquitto_sub reconnects by itself only after a 1 s delay; a new process is immediate.
        return self.restart(timeout)

    def error_text(self) -> str:
        """Return what mosquitto_sub printed on stderr."""
        return _read_text(self.error_path).strip()

    def records(self, *, include_probes: bool = False) -> list[Message]:
        """Return every complete message received so far, with QoS and retain flag."""
        try:
            raw = self.output_path.read_bytes()
        except FileNotFoundError:
            return []
        # The final piece lacks its newline while mosquitto_sub is still writing it: skip it.
        result = []
        for line in raw.split(b"\n")[:-1]:
            retain, qos, rest = line.decode().split("\t", 2)
            topic, hex_payload = rest.rsplit("\t", 1)
            if include_probes or not topic.startswith(PROBE_PREFIX):
                result.append(Message(topic, bytes.fromhex(hex_payload), int(qos), retain == "1"))
        return result

    def messages(self) -> list[tuple[str, bytes]]:
        """Return (topic, payload) of every message received so far, probes excluded."""
        return [(m.topic, m.payload) for m in self.records()]

    def entries(self, topic_prefix: str = "") -> list[dict[str, Any]]:
        """Parse every JSON line of every payload on topics starting with topic_prefix."""
        result: list[dict[str, Any]] = []
        for topic, payload in self.messages():
            if topic.startswith(topic_prefix):
                # A payload may pack many JSON Lines entries: each non-blank line is one entry.
                result += [json.loads(line) for line in payload.split(b"\n") if line.strip()]
        return result

    def _check(self, until: int | Callable[[Subscriber], bool]) -> bool:
        return until(self) if callable(until) else len(self.messages()) >= until

    def _timeout_error(self, until: int | Callable[[Subscriber], bool], timeout: float) -> str:
        got = self.messages()
        wanted = f"{until} messages" if isinstance(until, int) else "the condition"
        return (
            f"waited {timeout} s for {wanted} on {self.topic!r}: got {len(got)} messages "
            f"(last: {got[-3:]!r}); mosquitto_sub running={self.running}, "
            f"stderr={self.error_text()!r}"
        )

    async def wait_for(
        self, until: int | Callable[[Subscriber], bool], timeout: float = 10.0
    ) -> list[tuple[str, bytes]]:
        """Wait without blocking the event loop for a message count or a predicate on self."""
        deadline = time.monotonic() + timeout
        while not self._check(until):
            if time.monotonic() > deadline:
                raise SubscriberError(self._timeout_error(until, timeout))
            await asyncio.sleep(_POLL)
        return self.messages()

    def wait_for_sync(
        self, until: int | Callable[[Subscriber], bool], timeout: float = 10.0
    ) -> list[tuple[str, bytes]]:
        """Block until a message count or a predicate on self holds (for sync tests)."""
        deadline = time.monotonic() + timeout
        while not self._check(until):
            if time.monotonic() > deadline:
                raise SubscriberError(self._timeout_error(until, timeout))
            time.sleep(_POLL)
        return self.messages()

    async def wait_for_entries(
        self, count: int, topic_prefix: str = "", timeout: float = 10.0
    ) -> list[dict[str, Any]]:
        """Wait until at least count JSON entries arrived under topic_prefix; return them all."""
        await self.wait_for(lambda sub: len(sub.entries(topic_prefix)) >= count, timeout)
        return self.entries(topic_prefix)

    def close(self) -> None:
        """Stop mosquitto_sub and remove its temp dir if this object created it."""
        self.stop()
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Subscriber(port={self.connect_port}, topic={self.topic!r}, "
            f"client_id={self.client_id!r}, running={self.running})"
        )


@contextmanager
def running_broker(**options: Any) -> Iterator[Broker]:
    """Run a Broker(**options) for the duration of a with block; show its log on failure."""
    broker = Broker(**options)
    try:
        broker.start()
        yield broker
    except BaseException:
        # The temp dir goes away on close: keep the log where pytest shows it.
        print(f"--- mosquitto log ({broker!r}) ---\n{broker.log_text()}")
        raise
    finally:
        broker.close()


@contextmanager
def running_subscriber(
    broker: Broker, topic: str = "logs/#", **options: Any
) -> Iterator[Subscriber]:
    """Run a started Subscriber on broker for the duration of a with block."""
    sub = broker.subscriber(topic, **options)
    try:
        sub.start()
        yield sub
    finally:
        sub.close()
