"""File modes for atomic writes: `tempfile.mkstemp` and `mkdtemp` create owner-only files (0600) and folders
(0700), so a file written to a temporary name and renamed into place would stay unreadable to the service
or a colleague. `publish_mode` gives it the mode a plain `open` or `mkdir` would have under the umask."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_UMASK = os.umask(0o022)  # read once, at import: os.umask can only be read by setting it
os.umask(_UMASK)


def publish_mode(path: str | Path) -> None:
    os.chmod(path, (0o777 if Path(path).is_dir() else 0o666) & ~_UMASK)


def write_atomic(path: str | Path, data: bytes) -> None:
    """`data` to `path` through a temporary file beside it, renamed into place: a reader sees the old content
    or the new, never part of it, and two writers never share a temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        publish_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
