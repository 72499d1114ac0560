"""Reading a JSON object from a file, with errors that name the file (config files of checkpoints, adapters
and exported folders)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_json_object(path: Path, error: type[Exception], name: str | None = None) -> dict[str, Any]:
    """The JSON object in path. Raises error(message) when the file is missing, unreadable, not JSON or not an
    object; the message starts with name (default: the path)."""
    where = name or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{where}: missing") from None
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{where}: cannot read: {e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{where}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    if not isinstance(data, dict):
        raise error(f"{where}: expected a JSON object at the top level")
    return data
