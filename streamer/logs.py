"""Structured JSON logs: one object per line, with workspace/destination/event ids when known.

Secrets never reach a log call (destinations are logged by id only); as a second line of
defence the formatter replaces any encrypted envelope or bearer-looking token it sees.
"""

from __future__ import annotations

import logging
import re
import time

import orjson

_CONTEXT = ("workspace_id", "destination_id", "event_id", "command_id", "status", "attempt", "kind")
_SCRUB = re.compile(r"(v[12]:[A-Za-z0-9_.-]+:[A-Za-z0-9_=-]{16,})|((?:Splunk|Bearer)\s+[A-Za-z0-9._~+/=-]{8,})")


def scrub(text: str) -> str:
    return _SCRUB.sub("***", text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": scrub(record.getMessage()),
        }
        for key in _CONTEXT:
            value = record.__dict__.get(key)
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["exc"] = scrub(self.formatException(record.exc_info))
        return orjson.dumps(out, default=str).decode()


# aiokafka logs these at ERROR while a worker starts or the group rebalances: the
# coordinator is being elected or moved, and the client retries by itself. An operator
# needs to act only if they persist, which readiness shows.
_EXPECTED = ("GroupCoordinatorNotAvailableError", "NotCoordinatorForGroupError", "CoordinatorLoadInProgressError",
             "RebalanceInProgressError")


class ExpectedStatesAtInfo(logging.Filter):
    """Log expected start-up and rebalance states at info; keep error for what needs an operator."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and record.name.startswith("aiokafka"):
            text = record.getMessage()
            if any(name in text for name in _EXPECTED):
                record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def logging_config(level: str) -> dict:
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "streamer.logs.JsonFormatter"}},
        "filters": {"expected": {"()": "streamer.logs.ExpectedStatesAtInfo"}},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "json", "filters": ["expected"],
                                 "stream": "ext://sys.stdout"}},
        "root": {"level": level.upper(), "handlers": ["console"]},
        # aiokafka logs every transient broker hiccup at ERROR; our own retry logs say what matters.
        "loggers": {"aiokafka": {"level": "WARNING"}, "faust": {"level": "WARNING"},
                    "mode": {"level": "WARNING"}},
    }
