"""S3 object keys (spec section 4.1). Deterministic, so a re-delivery overwrites, never duplicates.

Parts of a key come from the event (workspace, job and event ids), so they are checked
before a key is built: every part must be in the safe set `A-Z a-z 0-9 _ . -` (1 to 200
characters, never containing `..`). A `/` would add folders, `..` could climb out of the
workspace's folder in tools that sync a bucket to disk, and control characters or
anything else (spaces, `\\`, `:`, non-ASCII) behave differently across object stores and
file systems. An event with an unsafe part is rejected with the reason (`key_problem`),
never encoded: a rejected event is visible and can be fixed upstream, an encoded one
would land at a key nobody expects. This applies to every object store destination.
"""

from __future__ import annotations

import re
from datetime import datetime

_SAFE = re.compile(r"[A-Za-z0-9_.-]{1,200}")
SAFE_SET = "A-Z a-z 0-9 _ . - (1 to 200 characters, no '..')"


def unsafe_part(value: int | str) -> bool:
    if type(value) is int:
        return False  # digits and a sign only
    return not (isinstance(value, str) and _SAFE.fullmatch(value) and ".." not in value)


def key_problem(**parts: int | str) -> str | None:
    """None when every named part may go into an object key, else the reason naming the first that may not."""
    for name, value in parts.items():
        if unsafe_part(value):
            return (f"{name} {str(value)[:80]!r} cannot be used in an object key: only {SAFE_SET} is allowed")
    return None


def unsafe_prefix(prefix: str) -> str | None:
    """A destination's key prefix: safe segments separated by `/` (a trailing `/` is allowed)."""
    if not prefix:
        return None
    segments = prefix[:-1].split("/") if prefix.endswith("/") else prefix.split("/")
    for seg in segments:
        if not _SAFE.fullmatch(seg) or ".." in seg or seg == ".":
            return f"prefix segment {seg[:80]!r} is not allowed: segments may use only {SAFE_SET}"
    return None


def job_path(job_id: int | str) -> str:
    """Numeric ids: 21 zero-padded digits in seven 3-digit folders; handles: the handle itself."""
    if isinstance(job_id, int):
        digits = f"{job_id:021d}"
        return "/".join(digits[i:i + 3] for i in range(0, 21, 3))
    return job_id


def job_key(user_id: int | str, recipe_id: int, job_id: int | str, status: str, at_utc: datetime,
            prefix: str = "") -> str:
    day, stamp = at_utc.strftime("%Y%m%d"), at_utc.strftime("%Y%m%d%H%M%S")
    key = (f"{user_id}/jobs/{recipe_id}/{day}/{job_path(job_id)}/"
           f"{user_id}-{recipe_id}-{job_id}-{stamp}-{status}.json")
    return _prefixed(prefix, key)


def activity_key(team_id: int | str, event: str, event_id: str, at_utc: datetime, prefix: str = "") -> str:
    day, stamp = at_utc.strftime("%Y%m%d"), at_utc.strftime("%Y%m%d%H%M%S")
    return _prefixed(prefix, f"{team_id}/activities/{day}/{team_id}-{event}-{event_id}-{stamp}.json")


def _prefixed(prefix: str, key: str) -> str:
    if not prefix:
        return key
    return prefix.rstrip("/") + "/" + key
