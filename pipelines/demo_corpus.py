"""A corpus present on every machine without download: Python's own reference topics (`pydoc_data`)."""

from __future__ import annotations

import re
from pathlib import Path

from pipelines.files import write_atomic

DEMO_QUESTIONS = [
    "What does the `with` statement do with a context manager?",
    "How does Python evaluate a lambda expression?",
]


def write_demo_corpus(folder: Path, limit: int | None = None) -> Path:
    """Write Python's reference topics as Markdown files (idempotent: unchanged files are not rewritten)."""
    from pydoc_data.topics import topics

    folder.mkdir(parents=True, exist_ok=True)
    for name in sorted(topics)[:limit]:
        path = folder / f"{re.sub(r'[^A-Za-z0-9_-]+', '_', name)}.md"
        text = f"# Python reference: {name}\n\n{topics[name].strip()}\n"
        if not path.exists() or path.read_text() != text:
            write_atomic(path, text.encode())  # a hidden temp name: no second run or listing meets it
    return folder
