"""The new-documents sensor: watches the corpus source and asks for a re-index when a document is added,
changed or removed.

The cursor keeps, per file, its size, mtime and a content hash. A tick stats every file and reads only
those whose size or mtime moved, so a `touch` costs one hash and starts no run; only a different content
(or a new or removed file) does. An S3 source (`s3://bucket/prefix`) is compared by size and ETag.
The very first tick (no cursor yet) requests one run: ingest is incremental, so a corpus that is already
indexed costs little, and documents added while the sensor was off are not missed.
The cursor also keeps the last run it requested: when that run failed (the cursor already holds the new
file states, so no change would be seen again), a later tick requests it again, up to MAX_RETRIES times.
File names may hold PII: the cursor keys files by a digest keyed by the store's secret (as ingest does), and
run tags and logs name only the files whose names no PII recognizer could match.
"""

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import dagster as dg

from assets.resources import SettingsResource
from pipelines.corpus.ingest import BEIR_CORPUS, beir_folder, name_digest, name_key, readable, store_keys_in
from pipelines.corpus.pii import may_hold_pii
from pipelines.corpus.store import LocalStore, S3Store, open_source, open_store
from pipelines.files import hidden
from pipelines.settings import Settings

# name digest -> [size, mtime_ns, content hash, name or "" where it may hold PII]; S3 objects have mtime 0
# and their ETag as the hash
Fingerprints = dict[str, list]
CURSOR_VERSION = 2  # v2: files keyed by a name digest; an older cursor counts as none (one ingest run)
# a run that fails again and again (a document that breaks ingest) is not requested every minute for ever
MAX_RETRIES = 3
MTIME_TICK_NS = 2_000_000_000  # the coarsest file time stamps (FAT's 2 s)

# the chunks and the indexes built straight from them (not what merely runs after them, such as the
# retrieval evaluation on its own labelled sample: the weekly re-index covers that)
new_documents_job = dg.define_asset_job(
    "ingest_new_documents",
    selection=dg.AssetSelection.assets("corpus_chunks").downstream(depth=1)
    & dg.AssetSelection.groups("corpus", "indexes"),
    description="Ingest changed corpus documents and update the keyword, dense and graph indexes.",
)


def watched_source(settings: Settings) -> str:
    """What `corpus_chunks` ingests: SM_CORPUS_DIR, else the demo corpus folder in the run directory."""
    return settings.corpus_dir or str(settings.run_dir / "demo_corpus")


def _sha16(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _shown(name: str, spacy_model: str) -> str:
    """The name, or "" where it may hold PII under the configured model (with an NER model any name may
    name a person); BEIR's fixed corpus file name is always shown. A name's bytes that are not UTF-8 show
    as U+FFFD, as ingest shows them (Dagster cannot store a run tag holding them)."""
    shown = readable(name)
    return shown if name == BEIR_CORPUS or not may_hold_pii(shown, spacy_model, name=True) else ""


def scan_folder(root: Path, previous: Fingerprints, key: bytes, spacy_model: str = "blank",
                skip: tuple[str, ...] = ()) -> Fingerprints:  # fmt: skip
    """Fingerprints of the files below `root` that ingest lists (hidden files and folders and links left
    out): [size, mtime_ns, content hash, name shown, when hashed (ns)]. A file whose size and mtime match
    `previous` keeps its previous hash without being read, unless it was hashed within MTIME_TICK_NS of its
    mtime: on a file system of coarse timestamps (1 s, 2 s on FAT) an edit of the same size in that tick
    keeps the mtime, and was never seen ("racy git"). Keys under the `skip` prefixes (the store's own) are
    left out."""
    out: Fingerprints = {}
    for name in LocalStore(root).list():
        if name.startswith(skip):
            continue
        p = root / name
        digest = name_digest(name, key)
        try:
            st = p.stat()
            prev = previous.get(digest) or []
            settled = (
                len(prev) > 4 and (prev[0], prev[1]) == (st.st_size, st.st_mtime_ns)
                and prev[4] - prev[1] > MTIME_TICK_NS
            )  # fmt: skip
            hashed_at = prev[4] if settled else time.time_ns()
            content = prev[2] if settled else _sha16(p)
            out[digest] = [st.st_size, st.st_mtime_ns, content, _shown(name, spacy_model), hashed_at]
        except OSError:  # removed between listing and reading: the next tick sees it gone
            continue
    return out


def scan_s3(src: S3Store, key: bytes, spacy_model: str = "blank", skip: tuple[str, ...] = ()) -> Fingerprints:
    objs = src.client.list_objects(src.bucket, prefix=src.prefix, recursive=True)
    n = len(src.prefix)
    return {
        name_digest(o.object_name[n:], key): [
            o.size or 0,
            0,
            (o.etag or "").strip('"'),
            _shown(o.object_name[n:], spacy_model),
        ]
        for o in objs
        # hidden keys left out, as ingest's list leaves them (a changed .DS_Store requested a run for nothing)
        if not o.is_dir
        and o.object_name
        and not hidden(PurePosixPath(o.object_name[n:]))
        and not o.object_name[n:].startswith(skip)
    }


def scan_source(spec: str, settings: Settings, previous: Fingerprints) -> Fingerprints:
    """Fingerprints of a corpus source; FileNotFoundError when a local folder does not exist."""
    src, store = open_source(spec, settings), open_store(settings)
    key = name_key(store)
    model = settings.pii_spacy_model  # ingest redacts names with it: the sensor shows no name it would redact
    # the store's own objects, where the store lies inside the source, are no corpus (as ingest leaves them
    # out): each run's commit asked for another run that found nothing to do
    own = store_keys_in(src, store)
    if isinstance(src, S3Store):
        found = scan_s3(src, key, model, own)
    else:
        found = scan_folder(Path(spec), previous, key, model, own)
    # as ingest reads it: a BEIR folder's corpus file alone (what it leaves out changes nothing). The
    # folder is listed again by its names as they are (a name with PII is not shown), only where it holds
    # BEIR's corpus file, whose name is always shown: not on every tick
    beir = {digest: fp for digest, fp in found.items() if fp[3] == BEIR_CORPUS}
    return beir if beir and beir_folder([*src.list(), *src.unread()]) else found


@dataclass
class CorpusChanges:
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    @property
    def files(self) -> list[str]:
        return self.added + self.changed + self.removed

    def __bool__(self) -> bool:
        return bool(self.files)

    def summary(self) -> str:
        kinds = (("added", self.added), ("changed", self.changed), ("removed", self.removed))
        counts = ", ".join(f"{len(v)} {k}" for k, v in kinds if v)
        shown = sorted(f for f in self.files if f)
        hidden = len(self.files) - len(shown)
        text = counts + (f": {', '.join(shown[:3])}" if shown else "") + (", ..." if len(shown) > 3 else "")
        return text + (f" ({hidden} withheld: the name may hold PII)" if hidden else "")


def diff(previous: Fingerprints, current: Fingerprints) -> CorpusChanges:
    """Documents added, changed (content hash differs) and removed between two scans, by shown name."""

    def names(scan: Fingerprints, digests) -> list[str]:
        return [scan[d][3] for d in sorted(digests)]

    return CorpusChanges(
        added=names(current, set(current) - set(previous)),
        changed=names(current, {k for k in set(current) & set(previous) if current[k][2] != previous[k][2]}),
        removed=names(previous, set(previous) - set(current)),
    )


def _load_cursor(cursor: str | None, spec: str) -> Fingerprints | None:
    """The previous scan of `spec`, or None when there is none (first tick, or the source changed)."""
    if not cursor:
        return None
    state = json.loads(cursor)
    return state["files"] if state.get("source") == spec and state.get("v") == CURSOR_VERSION else None


def _failed_run(instance: dg.DagsterInstance, run_key: str) -> dg.DagsterRun | None:
    """The run launched for `run_key` if it failed (not one cancelled on purpose, nor one still going)."""
    runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/run_key": run_key}), limit=1)
    return runs[0] if runs and runs[0].status == dg.DagsterRunStatus.FAILURE else None


@dg.sensor(
    job=new_documents_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Re-index when a corpus document is added, changed or removed (content hash); again when "
    "that run failed.",
)
def new_documents_sensor(context: dg.SensorEvaluationContext, settings: SettingsResource):
    s = settings.get()
    spec = watched_source(s)
    previous = _load_cursor(context.cursor, spec)
    try:
        current = scan_source(spec, s, previous or {})
    except FileNotFoundError:
        return dg.SkipReason(f"corpus folder {spec} does not exist yet")
    saved = json.loads(context.cursor or "{}")
    # the run requests made so far: Dagster never repeats a run key, and a corpus can come back to a state it
    # had before (a file moved out and back, a source switched away and back), so the key is the new state
    # plus this count, kept across a change of source too (restarting at 0 made A -> B -> A repeat A's key)
    runs = int(saved.get("runs", 0))
    changes = diff(previous or {}, current)
    # the last request for this source (cursors saved before it was kept have none)
    last = saved.get("requested") if previous is not None else None
    failed = _failed_run(context.instance, last["run_key"]) if last and not changes else None
    retry = failed is not None and last is not None and last["retries"] < MAX_RETRIES
    if previous is None or changes or retry:
        runs += 1
    state = {"v": CURSOR_VERSION, "source": spec, "files": current, "runs": runs}

    def dump(requested: dict | None) -> str:
        return json.dumps({**state, "requested": requested} if requested else state,
                          separators=(",", ":"), sort_keys=True)  # fmt: skip

    run_key = hashlib.sha256(dump(None).encode()).hexdigest()[:24]
    if previous is not None and not changes and not retry:
        # mtimes may have moved without a content change: keep them so those files are not read again
        why = f"no document changed in {spec}"
        if failed is not None:
            why += f"; its ingest failed {MAX_RETRIES + 1} times (last run {failed.run_id[:8]}): see its log"
        return dg.SensorResult(skip_reason=why, cursor=dump(last))
    if retry:
        assert failed is not None and last is not None
        reason = f"retry {last['retries'] + 1} of failed run {failed.run_id[:8]}: {last['changes']}"
        counts = last["counts"]
        requested = {**last, "run_key": run_key, "retries": last["retries"] + 1}
    else:
        reason = "first scan" if previous is None else changes.summary()
        counts = [len(changes.added), len(changes.changed), len(changes.removed)]
        requested = {"run_key": run_key, "retries": 0, "changes": reason[:200], "counts": counts}
    context.log.info(f"{spec}: {reason}")
    request = dg.RunRequest(
        run_key=run_key,
        tags={
            "stratmaster/corpus": spec,
            "stratmaster/changes": reason[:200],
            "stratmaster/added": str(counts[0]),
            "stratmaster/changed": str(counts[1]),
            "stratmaster/removed": str(counts[2]),
        },
    )
    return dg.SensorResult(run_requests=[request], cursor=dump(requested))


SENSORS = [new_documents_sensor]
