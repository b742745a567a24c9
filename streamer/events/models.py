"""Audit event models (spec section 1).

They validate only what the streamer relies on: the workspace id, the job or event id, the
recipe id, status and timestamps. Everything else is `extra="allow"` and, more importantly,
never re-serialised from the model: the message sent on is built from the original parsed
JSON, so unknown fields and values (floats, nulls, nested JSON strings) pass through unchanged.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, field_validator


def _check_id(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError("must be a non-empty string or an integer")
    if isinstance(value, str) and not 0 < len(value) <= 200:
        raise ValueError("must be a non-empty string of at most 200 characters")
    if isinstance(value, int) and not -(2**63) <= value < 2**64:
        raise ValueError(f"integer {value} is outside the 64-bit range ids may have; send it as a string")
    return value


# Ids arrive as integers in older data and as strings in newer; both are kept as given.
Id = Annotated[int | str, BeforeValidator(_check_id)]

_UA_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} UTC$")
_SNAKE = re.compile(r"^[a-z][a-z0-9_]*$")


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class JobContext(_Open):
    user_id: Id = Field(description="The customer workspace id; equals account_id.")
    user_external_id: str | None = None


def _iso_with_offset(value: str) -> str:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("must be an ISO-8601 timestamp") from None
    if parsed.tzinfo is None:
        raise ValueError("must carry a UTC offset")
    return value


class JobSummary(_Open):
    """One finished job (topic audit.jobs.summary.v1)."""

    id: Id = Field(description="Job id: a handle like j-AbCd1234-XyZw99, or an integer in older data.")
    recipe_id: StrictInt
    status: Literal["succeeded", "failed"]
    started_at: str
    completed_at: str | None = None
    context: JobContext

    @field_validator("started_at")
    @classmethod
    def _started(cls, v: str) -> str:
        return _iso_with_offset(v)

    @field_validator("completed_at")
    @classmethod
    def _completed(cls, v: str | None) -> str | None:
        return None if v is None else _iso_with_offset(v)


class JobDetails(JobSummary):
    """A finished job with every executed recipe step (topic audit.jobs.details.v1)."""

    # The streamer relies on nothing inside a step (spec 1.3), so the steps are not validated:
    # they pass through as the producer wrote them (streamer/events/parse.py).
    lines: list[Any] = Field(description="One element per executed recipe step (recipe_line_number, "
                                         "adapter_name, adapter_operation, input, output, error, "
                                         "mask_data, line_stat); passed through unvalidated.")


class Actor(_Open):
    id: Id
    external_id: str | None = None


class Team(_Open):
    id: Id = Field(description="The customer workspace id.")
    external_id: str | None = None


class UserActivity(_Open):
    """A user action in a workspace (topic audit.user_activity.v1)."""

    id: Id | None = Field(default=None, description="Event id; derived from the content when absent.")
    event: Annotated[str, Field(max_length=100)]
    timestamp: str = Field(description="YYYY-MM-DD HH:MM:SS UTC")
    user: Actor | None = None
    team: Team

    @field_validator("event")
    @classmethod
    def _event(cls, v: str) -> str:
        if not _SNAKE.match(v):
            raise ValueError("must be a snake_case event name")
        return v

    @field_validator("timestamp")
    @classmethod
    def _timestamp(cls, v: str) -> str:
        if not _UA_TIMESTAMP.match(v):
            raise ValueError("must look like 'YYYY-MM-DD HH:MM:SS UTC'")
        datetime.strptime(v, "%Y-%m-%d %H:%M:%S UTC")
        return v


EventModel = type[JobSummary] | type[JobDetails] | type[UserActivity]
Kind = Literal["job_summary", "job_details", "user_activity"]
MODELS: dict[str, Any] = {"job_summary": JobSummary, "job_details": JobDetails, "user_activity": UserActivity}
