"""Input fingerprints, so that an asset whose inputs, settings and code are unchanged reuses its last output.

fp = fingerprint(prompts, outcomes, "stack", source_digest(Path("router_models/router")))
record = out / "fingerprint.json"
if (last := recall(record, fp)) is not None: ...  # reuse `last`
else: forget(record), then write the outputs, then remember(record, fp, path=str(path))
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.files import hidden, write_atomic


def _update_with_path(h: Any, p: Path) -> None:
    files = [p]
    # in a folder, hidden entries are editor and in-progress state (.ipynb_checkpoints, .x.tmp), not content
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and not hidden(f.relative_to(p)))
    for f in files:
        _update_framed(h, str(f.relative_to(p) if p.is_dir() else f.name).encode())
        with open(f, "rb") as fh:
            h.update(os.fstat(fh.fileno()).st_size.to_bytes(8, "little"))  # where this file's bytes end
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)


def _update_framed(h: Any, data: bytes) -> None:
    """`data` with its length first: names and contents hashed one after the other cannot run into each
    other ({x: "A\ny.pyB"} and {x: "A\n", y.py: "B"} hash apart)."""
    h.update(len(data).to_bytes(8, "little") + data)


def fingerprint(*parts: Any) -> str:
    """sha256 over the parts: DataFrames by content, paths (files or folders) by bytes, the rest as JSON."""
    h = hashlib.sha256()
    for part in parts:
        h.update(b"\x00")
        if isinstance(part, pd.DataFrame):
            h.update(json.dumps([str(c) for c in part.columns]).encode())
            try:
                h.update(pd.util.hash_pandas_object(part, index=False).values.tobytes())
            except TypeError:  # cells pandas cannot hash (a RAG prompt's list of contexts): their JSON
                h.update(part.to_json(orient="values", default_handler=str).encode())
        elif isinstance(part, Path) and part.exists():
            _update_with_path(h, part)
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()


def source_digest(*paths: Path, patterns: tuple[str, ...] = ("*.py",)) -> str:
    """A hash of the files matching `patterns` under the folders in `paths`, and of the files named there:
    changes whenever that code does. A path that does not exist is an error, not an empty hash."""
    h = hashlib.sha256()
    for d in map(Path, paths):
        if d.is_file():
            files = [d]
        elif d.is_dir():
            files = sorted({f for p in patterns for f in d.rglob(p) if not hidden(f.relative_to(d))})
        else:
            raise FileNotFoundError(f"source_digest: no file or folder {d}")
        for f in files:
            _update_framed(h, str(f.relative_to(d.parent)).encode())  # a module moved to another package too
            _update_framed(h, f.read_bytes())
    return h.hexdigest()[:16]


def recall(record: Path, fp: str) -> dict[str, Any] | None:
    """The result remembered under `fp` in `record`, or None (no record, another fingerprint, unreadable)."""
    try:
        doc = json.loads(Path(record).read_text())
    except (OSError, ValueError):
        return None
    return doc.get("result") if isinstance(doc, dict) and doc.get("fingerprint") == fp else None


def remember(record: Path, fp: str, **result: Any) -> None:
    """Write {fingerprint, result} atomically: last, once every output it vouches for is written."""
    write_atomic(record, json.dumps({"fingerprint": fp, "result": result}, indent=1, default=str).encode())


def forget(record: Path) -> None:
    """Drop the record before outputs are overwritten: a run that dies half way leaves outputs that no
    fingerprint vouches for, so the next run computes them again rather than reuse a mix."""
    Path(record).unlink(missing_ok=True)
