"""The notification record on `audit.notifications.v1`, for the platform's mailer.

One record per destination state change (started failing, recovered), decided by the
notifier (`streamer.status.notices`) from every worker's status rows. Key = destination id.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel, Field


class DestinationNotification(BaseModel):
    """A destination started failing (its circuit breaker opened, or a delivery was
    dead-lettered) or recovered (deliveries succeed again)."""

    id: str = Field(description="unique id of this notification (idempotency for the mailer)")
    state: Literal["failing", "recovered"]
    destination_id: str = Field(description='"workspace:<id>" or "partner:<id>"')
    scope: Literal["workspace", "partner"]
    workspace_id: str | None = Field(description="the workspace whose events failed (partner-wide: one of them)")
    partner_id: str | None = Field(description="the workspace's partner, when registered")
    reason: str = Field(description="the destination's last error (redacted: never a secret), or why it recovered")
    status: int | None = Field(default=None, description="the destination's HTTP status, when it answered one")
    since: datetime = Field(description="since when it has been failing, or when it recovered")
    at: datetime = Field(description="when this notification was made")


def ms_to_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
