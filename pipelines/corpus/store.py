"""Object stores behind one small interface: a local directory (default) or an S3 bucket via `minio`.

Keys are '/'-separated strings. Every `put` is atomic: a reader sees the old object or the new one, never
half a file (a temp file renamed into place locally; a single PUT on S3). `put_if` writes only over the
object `get_tagged` read (S3's conditional PUT), so of two writers that read the same object one wins.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import stat
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Protocol
from urllib.parse import urlparse

from pipelines.files import hidden, write_atomic
from pipelines.settings import Settings

# kinds of file a folder's listing leaves out, and why (each is recorded by ingest, never read)
SPECIAL_FILES = (
    (stat.S_ISLNK, "a symbolic link: not followed"),
    (stat.S_ISFIFO, "a named pipe: not a regular file, not read"),
    (stat.S_ISSOCK, "a socket: not a regular file, not read"),
    (stat.S_ISCHR, "a device: not a regular file, not read"),
    (stat.S_ISBLK, "a device: not a regular file, not read"),
)


class StoreConflict(Exception):
    """`put_if` found the object changed (or made, or removed) since it was read."""


class ObjectStore(Protocol):
    uri: str
    unreadable: tuple[str, ...]  # keys of folders the last `list` could not read (none on S3)

    def put(self, key: str, data: bytes) -> None: ...
    def put_if(self, key: str, data: bytes, tag: str | None) -> None: ...
    def get(self, key: str) -> bytes: ...
    def get_tagged(self, key: str) -> tuple[bytes, str] | None: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str = "") -> dict[str, int]: ...
    def unread(self, prefix: str = "") -> dict[str, str]: ...
    def delete(self, key: str) -> None: ...
    def exclusive(self, name: str) -> contextlib.AbstractContextManager[bool]: ...


class LocalStore:
    """Objects are files under `root`; `list` returns key -> size for every file below a prefix."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.uri = str(self.root)
        self.unreadable: tuple[str, ...] = ()  # the folders the last listing could not read

    def _path(self, key: str) -> Path:
        p = (self.root / key).resolve()
        if p != self.root and self.root not in p.parents:
            raise ValueError(f"key {key!r} escapes the store root")
        return p

    def put(self, key: str, data: bytes) -> None:
        write_atomic(self._path(key), data)

    def put_if(self, key: str, data: bytes, tag: str | None) -> None:
        """`put` where the object is still the one whose tag `get_tagged` gave (None: where there was none),
        else StoreConflict. A check, then a rename: atomic for writers that hold `exclusive`."""
        now = self.get_tagged(key)
        if (now[1] if now else None) != tag:
            raise StoreConflict(key)
        self.put(key, data)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise KeyError(key) from None

    def get_tagged(self, key: str) -> tuple[bytes, str] | None:
        """The object and a tag of its content (its sha256), or None where there is none."""
        try:
            data = self.get(key)
        except KeyError:
            return None
        return data, hashlib.sha256(data).hexdigest()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> dict[str, int]:
        out = {}
        for p, key in self._visible(prefix):
            with contextlib.suppress(FileNotFoundError):  # gone since the listing
                if p.is_file() and not p.is_symlink():
                    out[key] = p.stat().st_size
        return dict(sorted(out.items()))

    def unread(self, prefix: str = "") -> dict[str, str]:
        """What `list` leaves out below a prefix that is no folder, key -> why: symbolic links (to files or
        folders; never followed, as one could lead out of the root), named pipes (reading one waits for a
        writer), sockets and devices."""
        out = {}
        for p, key in self._visible(prefix):
            with contextlib.suppress(FileNotFoundError):  # gone since the listing
                mode = p.lstat().st_mode
                kind = next((k for test, k in SPECIAL_FILES if test(mode)), None)
                if kind:
                    out[key] = kind
        return dict(sorted(out.items()))

    def _visible(self, prefix: str) -> Iterator[tuple[Path, str]]:
        """Paths below the root and their keys, outside hidden files and folders (`.git/`, temp files).
        Folders that could not be listed (no permission) are kept in `unreadable`, by key: their files are
        not gone (`Path.rglob` passed over them in silence, and ingest removed their documents)."""
        unreadable: list[str] = []

        def failed(e: OSError) -> None:
            if not isinstance(e, FileNotFoundError) and e.filename is not None:  # a folder removed is gone
                key = Path(e.filename).relative_to(self.root).as_posix()
                unreadable.append("" if key == "." else key)  # "": the root itself

        if not self.root.exists():
            return
        for folder, dirs, names in os.walk(self.root, onerror=failed):  # links to folders are not entered
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for n in [*dirs, *names]:
                p = Path(folder) / n
                rel = p.relative_to(self.root)
                if not hidden(rel) and rel.as_posix().startswith(prefix):
                    yield p, rel.as_posix()
        inside = [u for u in unreadable if u.startswith(prefix) or prefix.startswith(f"{u}/".lstrip("/"))]
        self.unreadable = tuple(inside)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    @contextlib.contextmanager
    def exclusive(self, name: str) -> Iterator[bool]:
        """The store's advisory lock `name` for the block: False at once when another holder (a process, or
        another handle in this one) has it. An flock on a hidden file in the root, which `list` never shows:
        the OS frees it when its holder ends, even by a crash."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f".{name}.lock", "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True  # closing the file releases the lock


class S3Store:
    """A bucket (and optional key prefix) on MinIO or any S3 service, through the official `minio` client."""

    def __init__(
        self, endpoint: str, bucket: str, access_key: str, secret_key: str,
        secure: bool = False, prefix: str = "", create_bucket: bool = True,
    ) -> None:  # fmt: skip
        from minio import Minio

        self.client = Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=secure)
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.uri = f"s3://{bucket}/{self.prefix}"
        self.unreadable: tuple[str, ...] = ()
        if create_bucket and not self.client.bucket_exists(bucket):
            from minio.error import S3Error

            try:
                self.client.make_bucket(bucket)
            except S3Error as e:  # made by another process (a sensor's run beside a CLI's) since the check
                if e.code != "BucketAlreadyOwnedByYou":
                    raise

    def _key(self, key: str) -> str:
        return self.prefix + key

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(self.bucket, self._key(key), io.BytesIO(data), length=len(data))

    def put_if(self, key: str, data: bytes, tag: str | None) -> None:
        """A conditional PUT: `If-Match` the ETag `get_tagged` gave, or `If-None-Match: *` where `tag` is
        None; the server answers 412 where another writer came first (AWS S3 since 2024, MinIO, SeaweedFS:
        live in tests/test_corpus_s3.py). minio-py's `put_object` sends such headers as user metadata
        (`X-Amz-Meta-If-Match`), so this calls its one-request `_put_object`."""
        from minio.error import S3Error

        headers: dict[str, str | list[str] | tuple[str]] = (
            {"If-Match": f'"{tag}"'} if tag is not None else {"If-None-Match": "*"}
        )
        try:
            self.client._put_object(self.bucket, self._key(key), data, headers=headers)
        except S3Error as e:
            if e.code in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise StoreConflict(key) from None
            raise

    def get(self, key: str) -> bytes:
        return self._get(key)[0]

    def get_tagged(self, key: str) -> tuple[bytes, str] | None:
        """The object and its ETag, or None where there is none."""
        try:
            return self._get(key)
        except KeyError:
            return None

    def _get(self, key: str) -> tuple[bytes, str]:
        from minio.error import S3Error

        try:
            resp = self.client.get_object(self.bucket, self._key(key))
        except S3Error as e:
            if e.code in ("NoSuchKey", "NoSuchObject"):
                raise KeyError(key) from None
            raise
        try:
            return resp.read(), (resp.headers.get("ETag") or "").strip('"')
        finally:
            resp.close()
            resp.release_conn()

    def exists(self, key: str) -> bool:
        from minio.error import S3Error

        try:
            self.client.stat_object(self.bucket, self._key(key))
            return True
        except S3Error as e:  # only a missing object is an answer; a missing bucket or access is an error
            if e.code in ("NoSuchKey", "NoSuchObject"):
                return False
            raise

    def list(self, prefix: str = "") -> dict[str, int]:
        objs = self.client.list_objects(self.bucket, prefix=self._key(prefix), recursive=True)
        n = len(self.prefix)
        # hidden keys (`.git/`, `.DS_Store`, drafts) left out, as a local folder's are
        listed = ((o.object_name[n:], o.size or 0) for o in objs if not o.is_dir)
        return dict(sorted((k, size) for k, size in listed if not hidden(PurePosixPath(k))))

    def unread(self, prefix: str = "") -> dict[str, str]:
        return {}  # S3 has only objects

    def delete(self, key: str) -> None:
        self.client.remove_object(self.bucket, self._key(key))

    @contextlib.contextmanager
    def exclusive(self, name: str) -> Iterator[bool]:
        """S3 has no lock to take: always True; a caller that needs one writes with `put_if` (as ingest
        commits its manifest)."""
        yield True


def s3_store(settings: Settings, bucket: str | None = None, prefix: str = "", create: bool = True) -> S3Store:
    """The S3 bucket of the settings (or `bucket`); a ValueError where the credentials are not set."""
    if not settings.s3_access_key or not settings.s3_secret_key.get_secret_value():
        raise ValueError(
            "S3 needs credentials from the environment: set SM_S3_ACCESS_KEY and SM_S3_SECRET_KEY"
        )
    return S3Store(
        settings.s3_endpoint, bucket or settings.s3_bucket, settings.s3_access_key,
        settings.s3_secret_key.get_secret_value(),
        secure=settings.s3_secure, prefix=prefix, create_bucket=create,
    )  # fmt: skip


def open_store(settings: Settings, root: str | Path | None = None) -> ObjectStore:
    """Where chunks and the ingest manifest live: `run_dir/store` (or `root`) locally, or the S3 bucket."""
    if settings.object_store == "s3":
        return s3_store(settings, prefix=str(root or ""))
    return LocalStore(root or settings.run_dir / "store")


def open_source(spec: str | Path, settings: Settings) -> ObjectStore:
    """A corpus source: a local folder, or `s3://bucket/prefix` read through the `minio` client."""
    spec = str(spec)
    if spec.startswith("s3://"):
        u = urlparse(spec)
        return s3_store(settings, bucket=u.netloc, prefix=u.path.lstrip("/"), create=False)
    path = Path(spec)
    if not path.is_dir():
        raise FileNotFoundError(f"corpus folder not found: {path}")
    return LocalStore(path)
