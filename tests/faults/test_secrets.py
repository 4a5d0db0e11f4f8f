"""Credentials and secret-looking fields never leak: not in reprs, stats, errors, stderr, logs,
dead letters or the log file, even when real servers refuse the credentials (and echo them)."""

from __future__ import annotations

import base64
import json
import logging
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from async_session_logger import (
    DEFAULT_MASK_KEYS,
    SessionLogger,
    SinkError,
    read_dead_letters,
)
from async_session_logger._report import print_error
from async_session_logger.sinks import FileSink, MqttSink
from async_session_logger.sinks.smtp import SmtpSink

from ..mqtt_broker import Broker
from ..sinks.test_smtp import Server, smtp_options
from .conftest import wait_until


def _secret(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex}"


MQTT_PASSWORD = _secret("mqtt-pw")
SMTP_PASSWORD = _secret("smtp-pw")
FIELD_SECRETS = {name: _secret(name) for name in ("meta", "nested", "bearer", "listed", "deep")}


def _forms(password: str, user: str) -> list[str]:
    """The password as it may travel: plain, base64 (AUTH LOGIN), AUTH PLAIN's base64."""
    return [
        password,
        base64.b64encode(password.encode()).decode(),
        base64.b64encode(f"\0{user}\0{password}".encode()).decode(),
    ]


SECRETS = [*_forms(MQTT_PASSWORD, "logger"), *_forms(SMTP_PASSWORD, "bob")]
SECRETS += list(FIELD_SECRETS.values())


def echoing_authenticator(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
) -> AuthResult:
    """Refuse every login with a 535 that echoes the password in all its forms (a careless
    server, or one behind a proxy that logs), so the sink has to scrub it."""
    assert isinstance(data, LoginPassword)
    password = data.password.decode()
    echo = " ".join(_forms(password, data.login.decode()))
    return AuthResult(success=False, handled=False, message=f"535 5.7.8 bad credentials {echo}")


def test_credentials_and_secret_fields_never_leak(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Wrong passwords against a real mosquitto and a real aiosmtpd that echoes them back, and
    secret-looking metadata and custom fields: none of it shows anywhere a user can look."""
    caplog.set_level(logging.DEBUG)  # every library's logger: aiomqtt, paho, aiosmtplib
    log, dead = tmp_path / "log.jsonl", tmp_path / "dead.jsonl"
    errors: list[SinkError] = []

    def on_error(error: SinkError) -> None:
        errors.append(error)
        print_error(error)  # what the default does: one line on stderr

    with (
        Broker(users={"logger": "the-right-one"}, workdir=tmp_path / "broker") as broker,
        Server(authenticator=echoing_authenticator, auth_require_tls=False) as server,
    ):
        mqtt = MqttSink(
            "127.0.0.1", broker.port, username="logger", password=MQTT_PASSWORD, reconnect_max=0.2
        )
        smtp = SmtpSink(
            **smtp_options(server.port, username="bob", password=SMTP_PASSWORD, retries=0),
            max_emails_per_minute=None,
        )
        sinks = [FileSink(log), mqtt, smtp]
        logger = SessionLogger(
            sinks=sinks,
            dead_letter_path=dead,
            on_error=on_error,
            close_timeout=2,
        )
        logger.start_session(
            "vault",
            metadata={
                "db_password": FIELD_SECRETS["meta"],
                "service": {"Api_Key": FIELD_SECRETS["nested"]},
            },
        )
        logger.log_entry(
            "vault",
            "calling the API",
            logging.ERROR,
            {
                "Authorization": f"Bearer {FIELD_SECRETS['bearer']}",
                "items": [{"client_secret": FIELD_SECRETS["listed"]}],
                "a": {"b": {"c": {"refresh_TOKEN": FIELD_SECRETS["deep"]}}},
                "note": "visible",
            },
        )
        logger.close_session("vault")
        wait_until(lambda: smtp.stats()["failed_attempts"] >= 1, 10, "the SMTP refusal")
        wait_until(lambda: mqtt.stats()["connect_failures"] >= 1, 10, "the MQTT refusal")
        views = [
            repr(logger),
            *(repr(s) for s in sinks),
            json.dumps(logger.stats()),
            json.dumps(logger.health()),
        ]
        report = logger.close()
        views += [json.dumps(report.as_dict()), str(report)]

    err = capfd.readouterr().err
    # The failures were real, and reported with their causes.
    assert "535" in err and "bad credentials" in err
    assert "not authori" in err.lower()
    assert report["file"].delivered == 3
    assert report["mqtt"].dead_lettered == 3 and report["smtp"].dead_lettered == 3
    error_texts = [
        "".join(traceback.format_exception(e)) + repr(e) + repr(e.__cause__) for e in errors
    ]
    own_logs = [
        r.getMessage() for r in caplog.records if not r.name.startswith("mail.log")
    ]  # "mail.log" is the test server's own logger, not ours
    places = {
        "views": "\n".join(views),
        "errors": "\n".join(error_texts),
        "stderr": err,
        "logging": "\n".join(own_logs),
        "log file": log.read_text(),
        "dead letters": dead.read_text(),
    }
    for place, text in places.items():
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} leaked into {place}"
    # Masked, not dropped: the keys stay, with *** for values; other fields untouched.
    start, entry, _ = (json.loads(line) for line in log.read_text().splitlines())
    assert start["metadata"] == {"db_password": "***", "service": {"Api_Key": "***"}}
    assert entry["custom_fields"] == {
        "Authorization": "***",
        "items": [{"client_secret": "***"}],
        "a": {"b": {"c": {"refresh_TOKEN": "***"}}},
        "note": "visible",
    }
    letters = list(read_dead_letters(dead))
    assert {d["sink"] for d in letters} == {"mqtt", "smtp"}
    smtp_reason = next(d["reason"] for d in letters if d["sink"] == "smtp")
    assert smtp_reason.startswith("mail not delivered: SMTPAuthenticationError: 535")
    assert "***" in smtp_reason  # the echoed password, scrubbed


# -- property: any value under a secret-looking key stays out of the file -------------------
# The words come from the library's own public list, so the test cannot drift from what the
# library masks (a hand-written copy once lacked "cookie", "credential", "apikey", "api-key"
# and "private_key", and a key Hypothesis built from one of them failed the test).
SECRET_WORDS: tuple[str, ...] = tuple(DEFAULT_MASK_KEYS)
NONCE = uuid.uuid4().hex[:8]  # markers no generated key can spell by chance

# Keys without lone surrogates: two keys that differ only there may collide once escaped, and
# test_properties.py covers how surrogates are written.
key_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
secret_keys = st.sampled_from(SECRET_WORDS).flatmap(
    lambda w: st.tuples(key_text, key_text).map(
        lambda t: t[0] + "".join(c.upper() if i % 2 else c for i, c in enumerate(w)) + t[1]
    )
)
shape = st.recursive(
    st.just(None),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(key_text | secret_keys, children, max_size=3)
    ),
    max_leaves=12,
)


@dataclass
class SecretLog:
    """A file logger shared by the examples, and a cursor over what it wrote."""

    logger: SessionLogger
    path: Path
    offset: int = 0

    def written(self) -> str:
        """Flush, then return the text written since the last call."""
        assert self.logger.save_logs(timeout=30).ok
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        self.offset += len(data)
        return data.decode("utf-8")


@pytest.fixture(scope="module")
def secret_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecretLog]:
    """One file logger for every example (module scope: Hypothesis reruns the test body)."""
    path = tmp_path_factory.mktemp("secrets") / "log.jsonl"
    errors: list[SinkError] = []
    logger = SessionLogger(sinks=[FileSink(path)], dead_letter_path=None, on_error=errors.append)
    yield SecretLog(logger, path)
    logger.close()
    assert errors == []


def _is_secret(key: object) -> bool:
    return isinstance(key, str) and any(w in key.lower() for w in SECRET_WORDS)


def _fill(value: Any, counter: Iterator[int], masked: bool, out: dict[str, bool]) -> Any:
    """Replace leaves by unique markers; note whether each sits under a secret key."""
    if isinstance(value, dict):
        return {k: _fill(v, counter, masked or _is_secret(k), out) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, counter, masked, out) for v in value]
    marker = f"marker-{NONCE}-{next(counter)}-end"
    out[marker] = masked
    return marker


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def _each_word(test: Callable[..., None]) -> Callable[..., None]:
    """Add one explicit example per key the library masks, so every one is tried on every run,
    and one with near misses that must stay visible."""
    for word in DEFAULT_MASK_KEYS:
        test = example(metadata={f"x-{word.upper()}": None}, custom={word: [None]})(test)
    near = {"api key": None, "cook": None, "credit": None, "tok": None, "pass": None}
    return example(metadata=near, custom=[near])(test)


@settings(
    max_examples=200,
    deadline=None,
    # No example database: a stored failure must not decide later runs (the test is meant to
    # fail only on what the library does, never on what an earlier run of it saved).
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(metadata=st.dictionaries(key_text | secret_keys, shape, max_size=4), custom=shape)
@_each_word
def test_secret_values_never_reach_the_file(
    secret_log: SecretLog, metadata: Any, custom: Any
) -> None:
    """Any value under a key containing one of DEFAULT_MASK_KEYS (any case, any depth in dicts
    and lists of metadata and custom fields) is absent from the written lines; every other
    value is present."""
    assume(_depth(metadata) <= 15 and _depth(custom) <= 15)
    markers: dict[str, bool] = {}
    counter = iter(range(10**6))
    metadata = _fill(metadata, counter, False, markers)
    custom = {"value": _fill(custom, counter, False, markers)}
    logger = secret_log.logger
    logger.start_session("secrets", metadata)
    logger.log_entry("secrets", "m", logging.INFO, custom)
    logger.close_session("secrets")
    raw = secret_log.written()
    for marker, masked in markers.items():
        assert (marker in raw) is (not masked), (marker, masked)
