"""The new-documents sensor: watches the corpus source and asks for a re-index when a document is added,
changed or removed.

The cursor keeps, per file, its size, mtime and a content hash. A tick stats every file and reads only
those whose size or mtime moved, so a `touch` costs one hash and starts no run; only a different content
(or a new or removed file) does. An S3 source (`s3://bucket/prefix`) is compared by size and ETag.
The very first tick (no cursor yet) requests one run: ingest is incremental, so a corpus that is already
indexed costs little, and documents added while the sensor was off are not missed.
File names may hold PII: the cursor keys files by a digest keyed by the store's secret (as ingest does), and
run tags and logs name only the files whose names no PII recognizer could match.
"""

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from assets.resources import SettingsResource
from pipelines.corpus.ingest import BEIR_CORPUS, beir_folder, name_digest, name_key
from pipelines.corpus.pii import may_hold_pii
from pipelines.corpus.store import LocalStore, S3Store, open_source, open_store
from pipelines.settings import Settings

# name digest -> [size, mtime_ns, content hash, name or "" where it may hold PII]; S3 objects have mtime 0
# and their ETag as the hash
Fingerprints = dict[str, list]
CURSOR_VERSION = 2  # v2: files keyed by a name digest; an older cursor counts as none (one ingest run)

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
    name a person); BEIR's fixed corpus file name is always shown."""
    return name if name == BEIR_CORPUS or not may_hold_pii(name, spacy_model, name=True) else ""


def scan_folder(root: Path, previous: Fingerprints, key: bytes, spacy_model: str = "blank") -> Fingerprints:
    """Fingerprints of the files below `root` that ingest lists (hidden files and folders and links left
    out); a file whose size and mtime match `previous` keeps its previous hash without being read."""
    out: Fingerprints = {}
    for name in LocalStore(root).list():
        p = root / name
        digest = name_digest(name, key)
        try:
            st = p.stat()
            prev = previous.get(digest)
            same = prev is not None and prev[0] == st.st_size and prev[1] == st.st_mtime_ns
            content = prev[2] if same and prev else _sha16(p)
            out[digest] = [st.st_size, st.st_mtime_ns, content, _shown(name, spacy_model)]
        except OSError:  # removed between listing and reading: the next tick sees it gone
            continue
    return out


def scan_s3(src: S3Store, key: bytes, spacy_model: str = "blank") -> Fingerprints:
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
        if not o.is_dir and o.object_name
    }


def scan_source(spec: str, settings: Settings, previous: Fingerprints) -> Fingerprints:
    """Fingerprints of a corpus source; FileNotFoundError when a local folder does not exist."""
    src = open_source(spec, settings)
    key = name_key(open_store(settings))
    model = settings.pii_spacy_model  # ingest redacts names with it: the sensor shows no name it would redact
    if isinstance(src, S3Store):
        found = scan_s3(src, key, model)
    else:
        found = scan_folder(Path(spec), previous, key, model)
    # as ingest reads it: a BEIR folder's corpus file alone (what it leaves out changes nothing). The
    # folder is listed again by its names as they are (a name with PII is not shown), only where it holds
    # BEIR's corpus file, whose name is always shown: not on every tick
    beir = {digest: fp for digest, fp in found.items() if fp[3] == BEIR_CORPUS}
    return beir if beir and beir_folder([*src.list(), *src.links()]) else found


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


@dg.sensor(
    job=new_documents_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Re-index when a corpus document is added, changed or removed (content hash).",
)
def new_documents_sensor(context: dg.SensorEvaluationContext, settings: SettingsResource):
    s = settings.get()
    spec = watched_source(s)
    previous = _load_cursor(context.cursor, spec)
    try:
        current = scan_source(spec, s, previous or {})
    except FileNotFoundError:
        return dg.SkipReason(f"corpus folder {spec} does not exist yet")
    # the run requests made so far: Dagster never repeats a run key, and a corpus can come back to a state it
    # had before (a file moved out and back, a source switched away and back), so the key is the new state
    # plus this count, kept across a change of source too (restarting at 0 made A -> B -> A repeat A's key)
    runs = int(json.loads(context.cursor or "{}").get("runs", 0))
    changes = diff(previous or {}, current)
    if previous is None or changes:
        runs += 1
    cursor = json.dumps(
        {"v": CURSOR_VERSION, "source": spec, "files": current, "runs": runs},
        separators=(",", ":"), sort_keys=True,
    )  # fmt: skip
    if previous is not None and not changes:
        # mtimes may have moved without a content change: keep them so those files are not read again
        return dg.SensorResult(skip_reason=f"no document changed in {spec}", cursor=cursor)
    reason = "first scan" if previous is None else changes.summary()
    context.log.info(f"{spec}: {reason}")
    request = dg.RunRequest(
        run_key=hashlib.sha256(cursor.encode()).hexdigest()[:24],
        tags={
            "stratmaster/corpus": spec,
            "stratmaster/changes": reason[:200],
            "stratmaster/added": str(len(changes.added)),
            "stratmaster/changed": str(len(changes.changed)),
            "stratmaster/removed": str(len(changes.removed)),
        },
    )
    return dg.SensorResult(run_requests=[request], cursor=cursor)


SENSORS = [new_documents_sensor]
