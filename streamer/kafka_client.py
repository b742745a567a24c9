"""How every Kafka client in streamer connects: TLS and SASL settings, read once from the env.

One place, so the worker (Faust), the settings view, `streamer settings`, `streamer dlq`,
`streamer topics apply`, the demo and the benchmark cannot drift apart: each builds its
aiokafka client with `security.aiokafka()` (or Faust's App with `security.faust()`).

Secrets may come from a mounted file instead of the environment (`STREAMER_SASL_PASSWORD_FILE`
and friends), because Kubernetes Secrets and Docker secrets are files and an env var leaks
into `ps e`, crash dumps and child processes.
"""

from __future__ import annotations

import functools
import logging
import os
import ssl
from dataclasses import dataclass
from typing import Any, Mapping

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class KafkaConfigError(ValueError):
    """The security settings are inconsistent (a usage error: the CLI exits 2)."""


def _env(name: str, default: str, environ: Mapping[str, str]) -> str:
    return environ.get(f"STREAMER_{name}", default)


def _secret(name: str, environ: Mapping[str, str]) -> str | None:
    """`STREAMER_<name>`, or the content of the file named by `STREAMER_<name>_FILE`
    (one trailing newline stripped, as `echo` and `kubectl create secret` leave one)."""
    path = _env(f"{name}_FILE", "", environ)
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                return f.read().removesuffix("\n").removesuffix("\r")
        except OSError as e:
            raise KafkaConfigError(f"STREAMER_{name}_FILE={path}: {e.strerror}") from None
    return _env(name, "", environ) or None


@dataclass(frozen=True)
class KafkaSecurity:
    protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "SCRAM-SHA-512"
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_cafile: str | None = None  # None: the system's trusted CAs
    ssl_certfile: str | None = None  # client certificate for mTLS
    ssl_keyfile: str | None = None
    ssl_key_password: str | None = None
    ssl_check_hostname: bool = True

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "KafkaSecurity":
        environ = os.environ if environ is None else environ
        protocol = _env("SECURITY_PROTOCOL", "PLAINTEXT", environ).strip().upper()
        mechanism = _env("SASL_MECHANISM", cls.sasl_mechanism, environ).strip().upper()
        sec = cls(
            protocol=protocol,
            sasl_mechanism=mechanism,
            sasl_username=_secret("SASL_USERNAME", environ),
            sasl_password=_secret("SASL_PASSWORD", environ),
            ssl_cafile=_env("SSL_CAFILE", "", environ) or None,
            ssl_certfile=_env("SSL_CERTFILE", "", environ) or None,
            ssl_keyfile=_env("SSL_KEYFILE", "", environ) or None,
            ssl_key_password=_secret("SSL_KEY_PASSWORD", environ),
            ssl_check_hostname=_env("SSL_CHECK_HOSTNAME", "true", environ).strip().lower()
            in {"1", "true", "yes", "on"},
        )
        sec.validate()
        return sec

    @property
    def uses_ssl(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    def validate(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise KafkaConfigError(f"STREAMER_SECURITY_PROTOCOL={self.protocol}: use one of {', '.join(PROTOCOLS)}")
        if self.uses_sasl:
            if self.sasl_mechanism not in MECHANISMS:
                raise KafkaConfigError(f"STREAMER_SASL_MECHANISM={self.sasl_mechanism}: use one of {', '.join(MECHANISMS)}")
            if not self.sasl_username or self.sasl_password is None:
                raise KafkaConfigError(f"{self.protocol} needs STREAMER_SASL_USERNAME and STREAMER_SASL_PASSWORD"
                                       " (or their _FILE variants)")
        if self.ssl_keyfile and not self.ssl_certfile:
            raise KafkaConfigError("STREAMER_SSL_KEYFILE needs STREAMER_SSL_CERTFILE")
        for name, path in (("SSL_CAFILE", self.ssl_cafile), ("SSL_CERTFILE", self.ssl_certfile),
                           ("SSL_KEYFILE", self.ssl_keyfile)):
            if path and self.uses_ssl and not os.path.isfile(path):
                raise KafkaConfigError(f"STREAMER_{name}={path}: no such file")

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context (verifying the broker's certificate and host name), or None."""
        if not self.uses_ssl:
            return None
        return _context(self.ssl_cafile, self.ssl_certfile, self.ssl_keyfile, self.ssl_key_password,
                        self.ssl_check_hostname)

    def aiokafka(self) -> dict[str, Any]:
        """Keyword arguments for any aiokafka client (producer, consumer, admin)."""
        kw: dict[str, Any] = {"security_protocol": self.protocol}
        if self.uses_ssl:
            kw["ssl_context"] = self.ssl_context()
        if self.uses_sasl:
            kw.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.sasl_username,
                      sasl_plain_password=self.sasl_password)
        return kw

    def faust(self) -> dict[str, Any]:
        """Keyword arguments for faust.App: Faust passes `broker_credentials` to its consumer,
        producer and admin clients (faust/transport/drivers/aiokafka.py)."""
        import faust

        if self.uses_sasl:
            return {"broker_credentials": faust.SASLCredentials(
                username=self.sasl_username, password=self.sasl_password, mechanism=self.sasl_mechanism,
                ssl_context=self.ssl_context())}
        if self.uses_ssl:
            return {"broker_credentials": faust.SSLCredentials(self.ssl_context())}
        return {}

    def describe(self) -> str:
        """For error messages and logs: never the password."""
        parts = [self.protocol]
        if self.uses_sasl:
            parts.append(f"{self.sasl_mechanism} as {self.sasl_username!r}")
        if self.uses_ssl:
            parts.append(f"CA {self.ssl_cafile or 'system'}" + (", mTLS" if self.ssl_certfile else ""))
        return ", ".join(parts)


@functools.lru_cache(maxsize=8)
def _context(cafile, certfile, keyfile, key_password, check_hostname) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    ctx.check_hostname = check_hostname
    if certfile:
        ctx.load_cert_chain(certfile, keyfile, key_password)
    return ctx


def security(sec: KafkaSecurity | None = None) -> KafkaSecurity:
    """`sec`, or the settings of this process's environment."""
    return sec if sec is not None else KafkaSecurity.from_env()


def client_kwargs(sec: KafkaSecurity | None = None) -> dict[str, Any]:
    return security(sec).aiokafka()


class Causes(logging.Handler):
    """Collects what aiokafka logs while a client connects.

    aiokafka reports a failed bootstrap only as "Unable to bootstrap from ..." and logs the
    real cause (a wrong password, an untrusted certificate) separately; the CLI keeps those
    lines to say what is wrong. Installed, it also keeps aiokafka's own tracebacks off stderr.
    """

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def __enter__(self) -> "Causes":
        logging.getLogger("aiokafka").addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        logging.getLogger("aiokafka").removeHandler(self)


def explain(exc: BaseException, bootstrap: str, sec: KafkaSecurity | None = None,
            causes: list[str] | None = None) -> str:
    """One line an operator can act on, for a Kafka client that failed to connect or was refused."""
    try:
        how = security(sec).describe()
    except KafkaConfigError:
        how = "invalid security settings"
    last = str(exc) if str(exc).startswith(type(exc).__name__) else f"{type(exc).__name__}: {exc}"
    text = " | ".join([*dict.fromkeys((causes or [])[-2:]), last])
    if "SaslAuthenticationFailed" in text or "Authentication failed" in text:
        what = ("authentication failed; check STREAMER_SASL_USERNAME, STREAMER_SASL_PASSWORD and"
                " STREAMER_SASL_MECHANISM")
    elif "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        what = ("the broker's TLS certificate is not trusted (or does not name this host); check"
                " STREAMER_SSL_CAFILE and the bootstrap address")
    elif "Authorization" in text or "not authorized" in text.lower():
        what = "not authorized; the principal lacks an ACL (see docs/deploy.md, Kafka ACLs)"
    elif "closed" in text or "UnsupportedSaslMechanism" in text or "WRONG_VERSION_NUMBER" in text:
        what = "the broker dropped the connection; does STREAMER_SECURITY_PROTOCOL match its listener?"
    else:
        what = "could not connect"
    return f"Kafka at {bootstrap} ({how}): {what} [{text}]"
