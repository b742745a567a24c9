"""S3 object keys (spec section 4.1). Deterministic, so a re-delivery overwrites, never duplicates."""

from __future__ import annotations

from datetime import datetime


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
