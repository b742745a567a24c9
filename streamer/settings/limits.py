"""Size caps on settings commands and configurations (README, Security).

A command is stored for 30 days on the commands topic, its configuration in every worker's
memory and with every delivery record, so nothing in it may be unbounded. The caps are far
above any real configuration and small enough that a hostile command cannot exhaust a
worker. Every rejection names the limit it broke.
"""

from __future__ import annotations

KIB = 1024

MAX_COMMAND_BYTES = 1024 * KIB  # a whole command as produced (raw JSON bytes)
MAX_TEMPLATE_BYTES = 64 * KIB  # a message template (UTF-8 bytes)
MAX_HEADERS = 50  # plain and secret headers together
MAX_HEADER_NAME_BYTES = 256
MAX_HEADER_VALUE_BYTES = 8 * KIB  # a plain header's value, or a secret's plaintext
MAX_URL_BYTES = 2 * KIB  # a REST URL or an S3 endpoint URL
MAX_PEM_CHARS = 64 * KIB  # a destination's CA bundle or client certificate chain (PEM)
MAX_SECRET_ENVELOPE_CHARS = 16 * KIB  # an encrypted envelope (an 8 KiB secret, base64, plus the header)
MAX_FIELD_CHARS = 1 * KIB  # any other free-text field (tags, names, prefix, region, ...)
MAX_EVENT_IDS = 10_000  # event ids named by one replay command


def too_big(what: str, size: int, limit: int, unit: str = "bytes") -> str:
    return f"{what} is {size} {unit}, over the limit of {limit} {unit}"
