"""JSON Schemas generated from the pydantic models; `streamer schemas --check` guards staleness."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import TypeAdapter

from streamer.events.models import JobDetails, JobSummary, UserActivity
from streamer.notifications import DestinationNotification
from streamer.settings.model import Command, CommandResult, Configuration


def generate() -> dict[str, dict]:
    return {
        "job_summary.schema.json": JobSummary.model_json_schema(),
        "job_details.schema.json": JobDetails.model_json_schema(),
        "user_activity.schema.json": UserActivity.model_json_schema(),
        "settings_command.schema.json": TypeAdapter(Command).json_schema(),
        "settings_result.schema.json": CommandResult.model_json_schema(),
        "configuration.schema.json": Configuration.model_json_schema(),
        "notification.schema.json": DestinationNotification.model_json_schema(),
    }


def render(schema: dict) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write_or_check(directory: Path, check: bool) -> list[str]:
    """Write the schemas, or with check=True return the names of stale or missing files."""
    stale = []
    for name, schema in generate().items():
        path = directory / name
        text = render(schema)
        current = path.read_text() if path.exists() else None
        if current != text:
            stale.append(name)
            if not check:
                directory.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
    return stale
