"""Text input hygiene shared by every service: names are stored as given, in NFC, trimmed."""
from __future__ import annotations

import unicodedata


def clean_text(value: str | None) -> str | None:
    """NFC, trimmed; control characters refused (they break CSV exports and logs)."""
    if value is None:
        return None
    value = unicodedata.normalize("NFC", value).strip()
    if any(unicodedata.category(ch) == "Cc" and ch not in "\t\n" for ch in value):
        raise ValueError("control characters are not allowed")
    if not value:
        raise ValueError("must not be empty")
    return value
