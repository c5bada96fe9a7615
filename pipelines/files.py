"""File modes for atomic writes: `tempfile.mkstemp` and `mkdtemp` create owner-only files (0600) and folders
(0700), so a file written to a temporary name and renamed into place would stay unreadable to the service
or a colleague. `publish_mode` gives it the mode a plain `open` or `mkdir` would have under the umask."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePath
from typing import Any

_UMASK = os.umask(0o022)  # read once, at import: os.umask can only be read by setting it
os.umask(_UMASK)


def publish_mode(path: str | Path) -> None:
    os.chmod(path, (0o777 if Path(path).is_dir() else 0o666) & ~_UMASK)


def hidden(relative: PurePath) -> bool:
    """A path (relative to a folder) in or below a hidden entry: editor and in-progress state (`.git/`,
    `.ipynb_checkpoints/`, `.x.tmp`), never content."""
    return any(part.startswith(".") for part in relative.parts)


@contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary file beside `path` for the block to write (a name of its own: two writers never share
    one), renamed onto `path` when the block ends and removed if it fails: a reader sees the old content or
    the new, never part of it."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (
        FileExistsError,
        NotADirectoryError,
    ):  # a file where a folder should be (mkdir named another path)
        file = next((p for p in path.parents if p.exists() and not p.is_dir()), path.parent)
        raise NotADirectoryError(f"{path}: {file} is a file, not a folder") from None
    if path.is_dir():  # found when the rename failed, naming the temporary file
        raise IsADirectoryError(f"{path} is a folder, not a file")
    try:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    except OSError as e:
        raise naming(e, path) from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        publish_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def held(lock_file: str | Path) -> Iterator[None]:
    """An exclusive flock on `lock_file` (made if need be), waited for: one holder at a time across
    processes; the OS releases it when a holder dies."""
    import fcntl

    Path(lock_file).parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def check_writable_beside(path: str | Path) -> None:
    """An OSError unless a folder can be made beside `path` (where a folder is written before it is swapped
    in): a parent that is a file, or a read-only place, found before a long run rather than after it."""
    parent = Path(path).resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # a file where a folder should be
        raise NotADirectoryError(f"{path}: {parent} is a file, not a folder") from None
    try:
        Path(tempfile.mkdtemp(dir=parent, prefix=f".{Path(path).name}.")).rmdir()
    except OSError as e:
        raise naming(e, path) from None


def naming(e: OSError, path: str | Path) -> OSError:
    """`e` as the same kind of error about `path`: a failure to make a temporary name beside `path` named
    that name (".x.2bzh9bwd"), which the user never gave."""
    return type(e)(e.errno, e.strerror, str(path)) if e.errno is not None else e


def write_atomic(path: str | Path, data: bytes) -> None:
    """`data` to `path` atomically (`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def swap_in(tmp: Path, final: Path) -> None:
    """Replace the folder `final` with the folder `tmp` (a sibling, so renames): the old one moved aside, the
    new one renamed in, the old one removed; `final` is missing only between two renames, never half made."""
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def save_figure(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """A matplotlib figure laid out tight, written atomically to `path` (the format from its suffix), then
    closed, written or not."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    try:
        with atomic_path(path, suffix=path.suffix) as tmp:
            fig.savefig(tmp, dpi=dpi)
    finally:
        plt.close(fig)
    return path
