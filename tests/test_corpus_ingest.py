"""Ingest on real parsers, Presidio, the chunker and a local object store, on a small corpus written here."""

from __future__ import annotations

import contextlib
import io
import json
import os

import numpy as np
import pandas as pd
import pytest

from pipelines.corpus.ingest import CHUNKS_PREFIX, MANIFEST, ConcurrentIngest, ingest_corpus, load_chunks
from pipelines.corpus.store import LocalStore
from pipelines.settings import Settings

EMAIL, PHONE, CARD = "jane.doe@example.com", "+1 (415) 555-2671", "4111 1111 1111 1111"


def tiny_pdf(text: str) -> bytes:
    """A valid one-page PDF with `text` in Helvetica (hand-built: objects, xref table, trailer)."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objs = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out, offsets = io.BytesIO(), []
    out.write(b"%PDF-1.4\n")
    for i, body in enumerate(objs, 1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % i + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1))
    out.write(b"".join(b"%010d 00000 n \n" % o for o in offsets))
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref))
    return out.getvalue()


def write_corpus(root):
    root.mkdir(parents=True, exist_ok=True)
    (root / "notes.txt").write_text(
        "Quarterly notes. The retrieval team met on Monday.\n\n"
        f"For access write to {EMAIL} or call {PHONE}. The test card is {CARD}, expiry 12/29.\n"
        "Tantivy indexes were rebuilt overnight."
    )
    (root / "guide.md").write_text("# Indexing guide\n\nQdrant stores dense vectors. " * 30)
    (root / "page.html").write_text(
        "<html><head><title>Graph page</title><style>p{}</style></head>"
        "<body><p>Ladybug stores the knowledge graph.</p><script>var x=1;</script></body></html>"
    )
    (root / "paper.pdf").write_bytes(tiny_pdf("Hybrid retrieval fuses keyword and dense rankings."))
    (root / "broken.pdf").write_bytes(b"%PDF-1.7\n1 0 obj << /Type /Catalog /Pages 9 0 R >>\n\x00\x01garbage")
    (root / "blob.txt").write_bytes(bytes(range(256)) * 8)
    (root / "empty.md").write_text("   \n")
    (root / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 32)
    (root / "sub").mkdir(exist_ok=True)
    beir = [{"_id": "d1", "title": "Fusion", "text": "Reciprocal rank fusion combines rankings."},
            {"_id": "d2", "title": "Convex", "text": "A convex combination of normalised scores."},
    ]  # fmt: skip
    (root / "sub" / "docs.jsonl").write_text("\n".join(map(json.dumps, beir)) + "\n{not json\n")
    return root


@pytest.fixture
def env(tmp_path):
    settings = Settings(run_dir=tmp_path / "run", chunk_tokens=64, chunk_overlap=16)
    return settings, write_corpus(tmp_path / "corpus"), LocalStore(tmp_path / "store")


def test_ingest_parses_formats_and_records_skips(env):
    settings, corpus, store = env
    r = ingest_corpus(settings, str(corpus), store=store)
    chunks = load_chunks(settings, store)
    assert set(chunks["doc_id"]) == {"notes.txt", "guide.md", "page.html", "paper.pdf", "d1", "d2"}
    by_doc = chunks.groupby("doc_id")["text"].apply(" ".join)
    assert "fuses keyword and dense" in by_doc["paper.pdf"]
    assert "Ladybug stores" in by_doc["page.html"] and "var x" not in by_doc["page.html"]
    assert chunks.loc[chunks.doc_id == "page.html", "title"].iloc[0] == "Graph page"
    assert chunks.loc[chunks.doc_id == "guide.md", "title"].iloc[0] == "Indexing guide"
    assert (chunks.groupby("doc_id").size()["guide.md"]) > 1  # long doc: several 64-token chunks
    assert chunks["n_tokens"].max() <= 64
    reasons = {s["path"]: s["reason"] for s in r.skipped}
    assert "malformed PDF" in reasons["broken.pdf"]
    assert "binary" in reasons["blob.txt"] or "UTF-8" in reasons["blob.txt"]
    assert reasons["empty.md"] == "empty file"
    assert "unsupported" in reasons["image.png"]
    assert any(p.startswith("sub/docs.jsonl:line 3") for p in reasons)
    assert r.files_seen == 9 and r.chunks_total == len(chunks)


def test_pii_is_redacted_before_anything_is_stored(env, tmp_path):
    settings, corpus, store = env
    r = ingest_corpus(settings, str(corpus), store=store)
    assert r.pii_redacted.get("EMAIL_ADDRESS") == 1 and r.pii_redacted.get("CREDIT_CARD") == 1
    assert r.pii_redacted.get("PHONE_NUMBER") == 1
    notes = " ".join(load_chunks(settings, store).query("doc_id == 'notes.txt'")["text"])
    assert "<EMAIL_ADDRESS>" in notes and "<PHONE_NUMBER>" in notes and "<CREDIT_CARD>" in notes
    assert "expiry 12/29" in notes  # non-PII text survives
    for path in (tmp_path / "store").rglob("*"):  # every byte written to the store
        if path.is_file():
            blob = path.read_bytes()
            for secret in (EMAIL, "555-2671", CARD, CARD.replace(" ", "")):
                assert secret.encode() not in blob, (secret, path)


def test_second_ingest_of_unchanged_input_does_no_work(env, tmp_path):
    settings, corpus, store = env
    ingest_corpus(settings, str(corpus), store=store)
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "store").rglob("*") if p.is_file()}
    r = ingest_corpus(settings, str(corpus), store=store)
    assert not r.did_work and r.files_processed == 0 and r.chunks_written == 0 and r.docs_processed == 0
    assert r.files_unchanged == r.files_seen
    assert len(r.skipped) == 5  # skips are still reported
    after = {p: p.stat().st_mtime_ns for p in (tmp_path / "store").rglob("*") if p.is_file()}
    assert before == after  # nothing rewritten, not even the manifest


def test_changed_document_replaces_its_chunks_only(env):
    settings, corpus, store = env
    ingest_corpus(settings, str(corpus), store=store)
    old = load_chunks(settings, store)
    (corpus / "page.html").write_text("<html><title>Graph page</title><body>Nebula at scale.</body></html>")
    beir = [{"_id": "d1", "title": "Fusion", "text": "Reciprocal rank fusion combines rankings."},
            {"_id": "d2", "title": "Convex", "text": "Changed: tuned convex combinations win."}]  # fmt: skip
    (corpus / "sub" / "docs.jsonl").write_text("\n".join(map(json.dumps, beir)))
    (corpus / "guide.md").unlink()
    r = ingest_corpus(settings, str(corpus), store=store)
    new = load_chunks(settings, store)
    assert r.files_processed == 2 and r.files_removed == 1 and r.docs_reused == 1 and r.docs_processed == 2
    assert "guide.md" not in set(new["doc_id"])
    page = new[new.doc_id == "page.html"]
    assert list(page["text"]) == ["Nebula at scale."]
    assert set(page["chunk_id"]).isdisjoint(old["chunk_id"])
    same = ["notes.txt", "paper.pdf", "d1"]
    pick = lambda df: set(df[df.doc_id.isin(same)]["chunk_id"])  # noqa: E731
    assert pick(new) == pick(old)  # untouched documents keep their chunk ids
    assert "tuned convex" in " ".join(new[new.doc_id == "d2"]["text"])
    assert r.skipped and all(s["path"] != "sub/docs.jsonl:line 3" for s in r.skipped)


class CommitAfterManifestRead(LocalStore):
    """A real local store on which another ingest commits (and sweeps the old chunk objects) right after a
    reader has read the manifest: `hook` runs once, between that read and the reader's next step."""

    hook = None

    def get(self, key: str) -> bytes:
        data = super().get(key)
        if key == MANIFEST and self.hook is not None:
            hook, self.hook = self.hook, None
            hook()
        return data


def test_a_reader_whose_manifest_an_ingest_replaced_reads_the_new_corpus(env, tmp_path):
    """load_chunks read the manifest, an ingest committed and deleted the chunks it named: KeyError."""
    settings, corpus, _ = env
    store = CommitAfterManifestRead(tmp_path / "racing_store")
    ingest_corpus(settings, str(corpus), store=store)
    (corpus / "page.html").write_text("<html><title>Graph page</title><body>Nebula at scale.</body></html>")
    store.hook = lambda: ingest_corpus(settings, str(corpus), store=store)
    chunks = load_chunks(settings, store)
    assert store.hook is None  # the ingest ran in between
    assert list(chunks[chunks.doc_id == "page.html"]["text"]) == ["Nebula at scale."]
    assert chunks["chunk_id"].is_unique and "notes.txt" in set(chunks["doc_id"])
    store.delete(next(iter(store.list(CHUNKS_PREFIX))))  # gone with no newer manifest: an error, not a retry
    with pytest.raises(KeyError):
        load_chunks(settings, store)


class ManifestWriteFails(LocalStore):
    """A real local store whose manifest write fails: a run that dies after writing its chunks."""

    def put(self, key: str, data: bytes) -> None:
        if key == MANIFEST:
            raise OSError("disk full")
        super().put(key, data)


def test_a_run_that_dies_before_its_manifest_leaves_the_last_corpus_whole(env, tmp_path):
    settings, corpus, store = env
    ingest_corpus(settings, str(corpus), store=store)
    old = load_chunks(settings, store).sort_values("chunk_id", ignore_index=True)
    (corpus / "page.html").write_text("<html><title>Graph page</title><body>Nebula at scale.</body></html>")
    (corpus / "guide.md").unlink()
    with pytest.raises(OSError, match="disk full"):
        ingest_corpus(settings, str(corpus), store=ManifestWriteFails(tmp_path / "store"))
    # the last manifest still names every object it named, with the content it had
    after = load_chunks(settings, store).sort_values("chunk_id", ignore_index=True)
    pd.testing.assert_frame_equal(after, old)
    r = ingest_corpus(settings, str(corpus), store=store)
    assert r.files_removed == 1 and r.files_processed == 1
    new = load_chunks(settings, store)
    assert "guide.md" not in set(new["doc_id"]) and "Nebula at scale." in set(new["text"])
    named = {f["chunk_key"] for f in json.loads(store.get(MANIFEST))["files"].values() if f.get("chunk_key")}
    assert set(store.list("corpus/chunks/")) == named  # the dead run's objects and the old ones are gone


class AnotherIngestMeanwhile(LocalStore):
    """A real local store on which a second ingest runs to its end while this one writes its first chunks."""

    def __init__(self, root, meanwhile) -> None:
        super().__init__(root)
        self.meanwhile = meanwhile

    def put(self, key: str, data: bytes) -> None:
        super().put(key, data)
        if key.startswith(CHUNKS_PREFIX) and self.meanwhile:
            meanwhile, self.meanwhile = self.meanwhile, None
            meanwhile()


class NoLock(AnotherIngestMeanwhile):
    """The same, with no lock to take: as on S3."""

    @contextlib.contextmanager
    def exclusive(self, name):
        yield True


def test_a_second_ingest_on_a_local_store_stops_at_once_while_the_first_runs(env, tmp_path):
    settings, corpus, store = env
    ingest_corpus(settings, str(corpus), store=store)
    (corpus / "page.html").write_text("<html><title>Graph page</title><body>Nebula at scale.</body></html>")
    refused = []

    def meanwhile():
        with pytest.raises(ConcurrentIngest, match="another ingest is running"):
            ingest_corpus(settings, str(corpus), store=LocalStore(tmp_path / "store"))
        refused.append(True)

    first = ingest_corpus(settings, str(corpus), store=AnotherIngestMeanwhile(tmp_path / "store", meanwhile))
    assert refused and first.files_processed == 1
    assert "Nebula at scale." in set(load_chunks(settings, store)["text"])
    assert not ingest_corpus(settings, str(corpus), store=store).did_work  # free again once the first ended


def test_without_a_lock_the_second_of_two_ingests_to_commit_commits_nothing(env, tmp_path):
    settings, corpus, store = env
    ingest_corpus(settings, str(corpus), store=store)
    (corpus / "page.html").write_text("<html><title>Graph page</title><body>Nebula at scale.</body></html>")

    def other_run():  # starts after this one, sees a newer page, commits first and sweeps this run's object
        (corpus / "page.html").write_text("<html><title>Graph page</title><body>Kuzu in one file.</body>")
        ingest_corpus(settings, str(corpus), store=NoLock(tmp_path / "store", None))

    with pytest.raises(ConcurrentIngest, match="committed nothing"):
        ingest_corpus(settings, str(corpus), store=NoLock(tmp_path / "store", other_run))
    chunks = load_chunks(settings, store)  # the other run's corpus, whole
    assert "Kuzu in one file." in set(chunks["text"]) and "Nebula at scale." not in set(chunks["text"])
    again = ingest_corpus(settings, str(corpus), store=store)
    assert not again.did_work


def test_oversized_file_is_skipped_and_run_goes_on(env, tmp_path):
    settings, corpus, store = env
    (corpus / "huge.txt").write_text("word " * 300_000)
    r = ingest_corpus(settings.model_copy(update={"max_file_mb": 1.0}), str(corpus), store=store)
    assert any(s["path"] == "huge.txt" and s["reason"].startswith("oversized") for s in r.skipped)
    assert "notes.txt" in set(load_chunks(settings, store)["doc_id"])
    manifest = json.loads(store.get(MANIFEST))
    assert "huge.txt" not in manifest["files"]
    assert pd.api.types.is_integer_dtype(load_chunks(settings, store)["n_tokens"])


def test_ip_addresses_are_redacted_but_not_bnf_or_slices(tmp_path):
    from pipelines.corpus.pii import get_redactor

    text = "Host 192.168.1.20 and 2001:db8::8a2e:370:7334 went down. Grammar: expr ::= term; x = y[1::2]."
    out, counts = get_redactor("blank", str(tmp_path)).redact(text)
    assert counts["IP_ADDRESS"] == 2
    assert "192.168.1.20" not in out and "8a2e" not in out
    assert "expr ::= term" in out and "y[1::2]" in out


def test_ssns_and_addresses_on_private_domains_are_redacted_as_the_router_finds_them(tmp_path):
    """Ingest kept a US social security number and an address on a private domain (Presidio's e-mail check
    wants a public suffix), both of which the router's check counts as personal data. Numbers that are no
    SSN to it (a bare 9-digit run, a ZIP+4 code, a table's row of numbers) stay, beside an SSN too, and so do
    code and notation that look like addresses; addresses on internationalised domains are still redacted."""
    from pipelines.corpus.pii import get_redactor
    from router_models.router.signals import detect_pii

    redactor = get_redactor("blank", str(tmp_path))
    found = [("536-22-1234", "US_SSN"), ("jane.doe@ward7.internal", "EMAIL_ADDRESS"),
             ("ops@corp.LOCAL", "EMAIL_ADDRESS"), ("ivan@почта.рф", "EMAIL_ADDRESS"),
             ("ann@nhs.uk", "EMAIL_ADDRESS"), ("IVAN@XN--80A1ACNY.XN--P1AI", "EMAIL_ADDRESS")]  # fmt: skip
    for secret, kind in found:
        text = f"The intake form lists {secret} for the patient."
        out, counts = redactor.redact(text)
        assert counts == {kind: 1} and secret not in out and f"<{kind}>" in out, (secret, out)
        assert detect_pii(text) == (kind,)
    out, counts = redactor.redact("Record 536-22-1234; samples 536221234 and 94110-1234 were sequenced.")
    assert out == "Record <US_SSN>; samples 536221234 and 94110-1234 were sequenced."
    assert counts == {"US_SSN": 1}
    # after a label that says SSN, Presidio's other forms too (spaces, dots, none: they were kept)
    for labelled in (
        "SSN: 536.22.1234",
        "her SSN 536 22 1234",
        "social security no. 536221234",
        "SS# 536221234",
    ):
        out, counts = redactor.redact(f"The form gives {labelled} for the patient.")
        assert counts == {"US_SSN": 1} and "1234 " not in out and "<US_SSN> for" in out, out
    kept = (
        "Results went to build@host.v2; attention is q@k.transpose(-2, -1); Au@Ag.NPs were used. "
        "Cohorts: Jones 234 56 2011, Lee 198.61.2013."
    )
    assert redactor.redact(kept) == (kept, {})


def test_a_document_whose_name_ends_in_a_domain_keeps_its_extension(env, tmp_path):
    """`notes@home.md`: the name's second pass read `.md` (a top-level domain) as the address's end and took
    it, and the file was skipped as of no known type."""
    settings, _, store = env
    src = tmp_path / "ext"
    src.mkdir()
    for name in ("notes@home.md", "summary@v2.txt"):
        (src / name).write_text("Plain content about retrieval systems.")
    r = ingest_corpus(settings, str(src), store=store)
    assert not r.skipped, r.skipped
    doc_ids = sorted(load_chunks(settings, store).doc_id.str.replace(r"~[0-9a-f]{12}", "~", regex=True))
    assert doc_ids == ["<EMAIL_ADDRESS>~.md", "summary@v2.txt"]


def test_a_phone_number_written_with_unicode_dashes_is_redacted(tmp_path):
    """The phone trigger allowed only ASCII separators: 415–555–2671 (en dashes, as word processors
    write it) reached the store in clear, though Presidio reads it as a number."""
    from pipelines.corpus.pii import get_redactor

    for number in ("415–555–2671", "415—555—2671", "(415) 555‐2671"):
        out, counts = get_redactor("blank", str(tmp_path)).redact(f"Please call Jane at {number} today.")
        assert counts == {"PHONE_NUMBER": 1} and number not in out, number


def test_addresses_are_redacted_in_pieces_around_each_at_sign(tmp_path):
    """Presidio's e-mail pattern read a whole window in time quadratic in a base64 run (2.3 s for 20,000
    characters, minutes for 100,000): it reads pieces around each `@` now, and the offsets come back whole."""
    import base64

    from pipelines.corpus.pii import get_redactor

    blob = base64.b64encode(bytes(range(256)) * 60).decode()  # 20,480 characters
    text = f"jane.doe@example.com wrote: data:image/png;base64,{blob} Reply to bob+x@mail.example.org now."
    out, counts = get_redactor("blank", str(tmp_path)).redact(text)
    assert out == f"<EMAIL_ADDRESS> wrote: data:image/png;base64,{blob} Reply to <EMAIL_ADDRESS> now."
    assert counts == {"EMAIL_ADDRESS": 2}


def test_a_phone_number_after_a_long_numbered_list_is_redacted(tmp_path):
    """phonenumbers gives up on a text after 65,535 candidates (its max_tries): after a numbered list
    '3. 7. 1. ...' (98,000 characters, one analysis window) a phone number reached the store in clear."""
    from pipelines.corpus.pii import get_redactor

    digits = np.random.default_rng(0).integers(0, 10, size=50_000)
    text = ". ".join(str(v) for v in digits)[:98_000] + " Reach me at (415) 555-2671 today."
    out, counts = get_redactor("blank", str(tmp_path)).redact(text)
    assert "555-2671" not in out and counts == {"PHONE_NUMBER": 1}


@pytest.mark.parametrize("entity", ["4111 1111 1111 1111", "+1 415 555 2671", "jane.roe@example.com"])
def test_an_entity_across_the_analysis_window_edge_is_redacted_whole(tmp_path, entity):
    """Texts over PIECE_CHARS were cut at a space when a line had no break: a card or phone number with
    spaces, cut there, was in neither piece whole and stayed in clear."""
    from pipelines.corpus.pii import PIECE_CHARS, get_redactor

    redactor = get_redactor("blank", str(tmp_path))
    for offset in (-12, -8, -4, -1):  # the entity starts just before the first window's end
        text = "word " * ((PIECE_CHARS + offset) // 5) + entity + " and more" * 2_000
        out, counts = redactor.redact(text)
        assert entity not in out and sum(counts.values()) == 1, (offset, counts)
        assert out.startswith("word word") and out.endswith(" and more")


def test_a_title_only_edit_gives_new_chunk_ids_so_the_indexes_replace_them(env):
    """Chunk ids hashed the text alone: a changed <title> reached the store, yet the keyword and dense
    indexes, which sync by chunk id, kept the old title."""
    settings, corpus, store = env
    ingest_corpus(settings, str(corpus), store=store)
    old = load_chunks(settings, store).set_index("doc_id")
    (corpus / "page.html").write_text((corpus / "page.html").read_text().replace("Graph page", "Atlas page"))
    r = ingest_corpus(settings, str(corpus), store=store)
    new = load_chunks(settings, store).set_index("doc_id")
    assert r.docs_processed == 1 and new.loc["page.html", "title"] == "Atlas page"
    assert new.loc["page.html", "chunk_id"] != old.loc["page.html", "chunk_id"]
    assert new.loc["page.html", "text"] == old.loc["page.html", "text"]


def test_an_spacy_model_not_installed_is_refused_before_any_file(env):
    """SM_PII_SPACY_MODEL naming no installed pipeline: Presidio tried to download it, and ingest recorded
    every file as a name that "could not be read (ConnectionError)", exit 0."""
    settings, corpus, store = env
    wrong = settings.model_copy(update={"pii_spacy_model": "en_core_web_nonexistent"})
    with pytest.raises(ValueError, match="'en_core_web_nonexistent' is no installed spaCy pipeline"):
        ingest_corpus(wrong, str(corpus), store=store)
    assert not store.list()  # nothing written


def test_beir_lines_fail_alone(env, tmp_path):
    """A repeated _id, a bad byte, a NUL or a U+2028 inside a JSON string each cost at most their own line:
    before, one bad byte or NUL skipped the whole file, U+2028 split a record, and a repeated _id merged two
    records into one document whose later edit left the old record's chunk behind."""
    settings, _, store = env
    beir = tmp_path / "beir"
    beir.mkdir()
    records = [{"_id": "a", "text": "First line\u2028same record."}, {"_id": "b", "text": "Bananas."},
               {"_id": "a", "text": "A second record under a's id."},
               {"_id": "t", "title": "Aspirin lowers colorectal cancer risk", "text": ""}]  # fmt: skip
    lines = [json.dumps(r, ensure_ascii=False).encode() for r in records]
    lines[1:1] = [b'{"_id": "bad", "text": "caf\xe9"}', b'{"_id": "nul", "text": "x\x00"}']
    lines.append(b'{"_id": "sur", "text": "half a pair \\ud800 here"}')  # a lone surrogate failed the file
    (beir / "corpus.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    r = ingest_corpus(settings, str(beir), store=store)
    chunks = load_chunks(settings, store).set_index("doc_id")
    assert sorted(chunks.index) == ["a", "b", "t"]
    assert "same record" in chunks.loc["a", "text"]
    assert chunks.loc["t", "text"] == "Aspirin lowers colorectal cancer risk"  # title-only: was no chunk
    reasons = {s["path"]: s["reason"] for s in r.skipped}
    assert "UTF-8" in reasons["corpus.jsonl:line 2"] and "NUL" in reasons["corpus.jsonl:line 3"]
    assert "duplicate _id 'a'" in reasons["corpus.jsonl:line 5"]
    assert "surrogate" in reasons["corpus.jsonl:line 7"]


def test_a_doc_id_two_files_hold_is_recorded(env, tmp_path):
    """Two BEIR files with a common `_id` indexed both records under one doc id, and no record said so."""
    settings, _, store = env
    src = tmp_path / "two"
    src.mkdir()
    (src / "a.jsonl").write_text(json.dumps({"_id": "7", "text": "Aspirin and colorectal cancer."}) + "\n")
    (src / "b.jsonl").write_text(json.dumps({"_id": "7", "text": "Statins and stroke."}) + "\n")
    (src / "c.jsonl").write_text(json.dumps({"_id": "8", "text": "Vitamin D and falls."}) + "\n")
    (src / "d.jsonl").write_text((src / "c.jsonl").read_text())  # a copy: the same document, indexed once
    (src / "e.jsonl").write_text((src / "b.jsonl").read_text())  # the second holder's 7, not the first's
    for _ in range(2):  # recorded again when nothing changed
        r = ingest_corpus(settings, str(src), store=store)
        assert [s["path"] for s in r.skipped] == ["b.jsonl:7", "d.jsonl:8", "e.jsonl:7"], r.skipped
        other, copy, second_copy = (s["reason"] for s in r.skipped)
        assert other.startswith("1 doc id(s) also in a.jsonl (7): another document") and "apart" in other
        assert copy.startswith("1 doc id(s) also in c.jsonl (8): the same document there, indexed once")
        assert second_copy.startswith("1 doc id(s) also in b.jsonl (7): the same document there, indexed")
    assert sorted(load_chunks(settings, store)["doc_id"]) == ["7", "7", "8"]  # both 7s kept, 8 once
    (src / "d.jsonl").unlink()
    (src / "e.jsonl").unlink()
    (src / "a.jsonl").unlink()
    assert not ingest_corpus(settings, str(src), store=store).skipped


def test_a_document_over_a_million_characters_is_redacted_in_pieces(env, tmp_path):
    """spaCy refuses a text over 1,000,000 characters: Presidio raised, and the whole file was skipped."""
    settings, _, store = env
    big = tmp_path / "big"
    big.mkdir()
    filler = "The survey covers retrieval engines and their indexes.\n" * 20_000  # 1.1 M characters
    (big / "long.txt").write_text(filler + f"Contact {EMAIL} for the raw data.\n" + filler)
    r = ingest_corpus(settings, str(big), store=store)
    assert not r.skipped and r.pii_redacted.get("EMAIL_ADDRESS") == 1
    text = " ".join(load_chunks(settings, store)["text"])
    assert "<EMAIL_ADDRESS>" in text and EMAIL not in text


def test_a_rerun_names_known_files_without_the_pii_engine(env, tmp_path, monkeypatch):
    """Every run redacted every file name again, and a name that might hold PII (any digits) built the PII
    engine, about 18 s, to find the names the manifest already had. A new name is still redacted."""
    import pipelines.corpus.pii as pii

    settings, _, _ = env
    src = tmp_path / "src"
    (src / "jane.doe@example.com").mkdir(parents=True)
    (src / "jane.doe@example.com" / "2401.12345v2.txt").write_text("Notes on retrieval.")
    (src / "call 415-555-2671.txt").write_text("Notes on ranking.")
    store = LocalStore(tmp_path / "store")
    first = ingest_corpus(settings, str(src), store=store)
    names = set(json.loads(store.get(MANIFEST))["files"])

    def no_engine(*args, **kwargs):
        raise AssertionError("the PII engine was built")

    monkeypatch.setattr(pii, "get_redactor", no_engine)
    again = ingest_corpus(settings, str(src), store=store)
    assert not again.did_work and set(json.loads(store.get(MANIFEST))["files"]) == names
    assert again.files_unchanged == first.files_processed == 2
    (src / "call 415-555-2671.txt").rename(src / "call 415-555-2672.txt")
    monkeypatch.undo()
    third = ingest_corpus(settings, str(src), store=store)
    after = set(json.loads(store.get(MANIFEST))["files"])
    assert third.files_unchanged == 1 and not any("555" in n or "jane" in n for n in after), after


def test_pii_in_file_names_is_kept_nowhere(env, tmp_path):
    """File names were kept as they were, as doc ids, sources, chunk-id prefixes, manifest keys and skip
    records: an e-mail address or phone number in a name reached the store, every index and the Bento."""
    settings, _, store = env
    src = tmp_path / "named"
    (src / "jane.doe@example.com").mkdir(parents=True)
    (src / "jane.doe@example.com" / "cv.txt").write_text("Curriculum vitae: retrieval engineer.")
    (src / "notes for john.roe@example.org.md").write_text("# Notes\n\nQdrant and tantivy.")
    (src / "notes for mary.poe@example.org.md").write_text("# Notes\n\nLadybug and BM25.")
    (src / "call 415 555 2671.txt").write_text("Phone log.")
    (src / "broken john.roe@example.org.pdf").write_bytes(b"%PDF-1.7 garbage")
    (src / "plain.txt").write_text("Nothing personal.")
    r = ingest_corpus(settings, str(src), store=store)
    chunks = load_chunks(settings, store)
    assert sorted(chunks.doc_id.str.replace(r"~[0-9a-f]{12}", "~", regex=True)) == [
        "<EMAIL_ADDRESS>/cv~.txt", "call <PHONE_NUMBER>~.txt", "notes for <EMAIL_ADDRESS>~.md",
        "notes for <EMAIL_ADDRESS>~.md", "plain.txt",
    ]  # fmt: skip
    assert chunks.doc_id.nunique() == 5 and r.pii_redacted["EMAIL_ADDRESS"] >= 3
    (skip,) = r.skipped
    assert skip["path"].startswith("broken <EMAIL_ADDRESS>~") and "PDF" in skip["reason"]
    kept = b"".join(store.get(k) for k in store.list()) + json.dumps(r.to_dict()).encode()
    cells = " ".join(chunks.astype(str).to_numpy().ravel())  # parquet bytes may be compressed
    for secret in ("jane.doe", "john.roe", "mary.poe", "example.", "555 2671"):
        assert secret.encode() not in kept and secret not in cells, secret
    again = ingest_corpus(settings, str(src), store=store)
    assert not again.did_work and again.skipped == r.skipped
    assert set(load_chunks(settings, store).chunk_id) == set(chunks.chunk_id)


class SourceFileChanges(LocalStore):
    """A real local store that changes a listed source file when this run writes its first chunks: a user
    moving it away (`Path.unlink`), or a folder in its place, whose read fails as a read that times out."""

    def __init__(self, root, victim, change) -> None:
        super().__init__(root)
        self.victim, self.change = victim, change

    def put(self, key: str, data: bytes) -> None:
        super().put(key, data)
        if key.startswith(CHUNKS_PREFIX) and self.victim.is_file():
            self.change(self.victim)


def _folder_in_place(path) -> None:
    path.unlink()
    path.mkdir()


def _two_files_ingested(settings, tmp_path, second: str):
    """tmp_path/src with a.txt and b.txt (`second`), ingested into tmp_path/store."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("First file.")
    (src / "b.txt").write_text(second)
    ingest_corpus(settings, str(src), store=LocalStore(tmp_path / "store"))
    return src


def test_a_file_that_cannot_be_read_keeps_its_last_version(env, tmp_path):
    """A read error on a file indexed before dropped its chunks (and its index entries) till the next run."""
    settings, _, _ = env
    src = _two_files_ingested(settings, tmp_path, "Second file, indexed before.")
    (src / "a.txt").write_text("First file, edited.")
    store = SourceFileChanges(tmp_path / "store", src / "b.txt", _folder_in_place)
    r = ingest_corpus(settings, str(src), store=store)
    (skip,) = r.skipped
    assert skip["path"] == "b.txt" and skip["reason"].endswith("its last version is kept"), skip
    texts = set(load_chunks(settings, LocalStore(tmp_path / "store"))["text"])
    assert texts == {"First file, edited.", "Second file, indexed before."}


def test_a_revision_not_yet_whole_keeps_the_last_good_version_and_an_emptied_file_does_not(env, tmp_path):
    """A file a sync had only begun (NUL-padded) was a skip record that replaced its last good version: its
    chunks left the store, and the next index sync deleted them. A file emptied on purpose loses its text."""
    settings, _, _ = env
    src = _two_files_ingested(settings, tmp_path, "Second file, indexed before.")
    # the padding follows what the sync wrote so far, past the first 8 KiB of a long file too
    for begun in (b"Second", b"Second file, " * 1000):
        (src / "b.txt").write_bytes(begun + b"\x00\x00\x00\x00")
        r = ingest_corpus(settings, str(src), store=LocalStore(tmp_path / "store"))
        (skip,) = r.skipped
        assert skip["path"] == "b.txt" and skip["reason"].endswith("its last version is kept"), skip
        texts = set(load_chunks(settings, LocalStore(tmp_path / "store"))["text"])
        assert texts == {"First file.", "Second file, indexed before."}
    stray = b"Second file, " * 1000 + b"\x00" + b"saved whole."  # one NUL far in: no padding, text
    (src / "b.txt").write_bytes(stray)
    assert not ingest_corpus(settings, str(src), store=LocalStore(tmp_path / "store")).skipped
    assert not any("\x00" in t for t in load_chunks(settings, LocalStore(tmp_path / "store"))["text"])
    # a BEIR file caught mid-sync: its records past the padding had dropped out, one line's problem
    records = [{"_id": f"d{i}", "text": f"Record {i}."} for i in range(4)]
    (src / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    ingest_corpus(settings, str(src), store=LocalStore(tmp_path / "store"))
    (src / "c.jsonl").write_bytes((src / "c.jsonl").read_bytes()[:40] + b"\x00" * 200)
    r = ingest_corpus(settings, str(src), store=LocalStore(tmp_path / "store"))
    assert [s["path"] for s in r.skipped] == ["c.jsonl"] and "last version is kept" in r.skipped[0]["reason"]
    assert {f"d{i}" for i in range(4)} <= set(load_chunks(settings, LocalStore(tmp_path / "store"))["doc_id"])
    (src / "c.jsonl").unlink()
    (src / "b.txt").write_text("Second file, saved whole.")  # the next good save replaces it
    ingest_corpus(settings, str(src), store=LocalStore(tmp_path / "store"))
    texts = set(load_chunks(settings, LocalStore(tmp_path / "store"))["text"])
    assert texts == {"First file.", "Second file, saved whole."}
    (src / "b.txt").write_bytes(b"")  # emptied, perhaps to take out what it said
    r = ingest_corpus(settings, str(src), store=LocalStore(tmp_path / "store"))
    assert [s["reason"] for s in r.skipped] == ["empty file"]
    assert set(load_chunks(settings, LocalStore(tmp_path / "store"))["text"]) == {"First file."}


def test_pii_in_compound_file_names_and_in_skip_reasons_is_kept_nowhere(env, tmp_path):
    """Recognizers need word boundaries: `_` is a word character to them, and an address followed by
    `-notes` or `.backup` failed the e-mail check; such names were kept raw, and a file gone between listing
    and reading kept its raw name in the reason of its skip record, in the manifest for good."""
    settings, _, _ = env
    src = tmp_path / "named"
    src.mkdir()
    names = ["invoice_ann.lee@example.com_2024.txt", "ann.lee@example.com-notes.txt", "host_10.0.0.1.txt",
             "ann.lee@example.com.backup.txt", "ann_lee@example.com.txt", "bob-lee@example.com.md",
             "a plain.txt", "jane_536-22-1234.txt", "zz cv\\of ann.lee@example.com.txt"]  # fmt: skip
    # the last goes between listing and reading; its error (a KeyError) quotes the name with "\\" doubled
    for n in names:
        (src / n).write_text("Plain content about retrieval systems.")
    store = SourceFileChanges(tmp_path / "store", src / names[-1], lambda p: p.unlink())
    r = ingest_corpus(settings, str(src), store=store)
    doc_ids = sorted(load_chunks(settings, store).doc_id.str.replace(r"~[0-9a-f]{12}", "~", regex=True))
    assert doc_ids == [
        "<EMAIL_ADDRESS>-notes~.txt", "<EMAIL_ADDRESS>.backup~.txt", "<EMAIL_ADDRESS>~.md",
        "<EMAIL_ADDRESS>~.txt", "a plain.txt", "host_<IP_ADDRESS>~.txt", "invoice_<EMAIL_ADDRESS>_2024~.txt",
        "jane_<US_SSN>~.txt",
    ]  # fmt: skip
    (gone,) = r.skipped
    assert gone["path"].startswith("zz cv\\of <EMAIL_ADDRESS>~") and "KeyError" in gone["reason"]
    kept = b"".join(store.get(k) for k in store.list()) + json.dumps(r.to_dict()).encode()
    for secret in ("ann.lee", "ann_lee", "bob-lee", "10.0.0.1", "example.", "536-22-1234"):
        assert secret.encode() not in kept, secret
    again = ingest_corpus(settings, str(src), store=store)  # the gone file's record goes with it
    assert again.files_removed == 1 and not again.skipped
    assert len(json.loads(store.get(MANIFEST))["files"]) == len(names) - 1


def test_a_compound_name_is_redacted_when_it_is_the_first_to_need_the_engine(env, tmp_path):
    """The cheap check before the engine is built read `_` as part of a word: with no earlier name or text
    to build the engine, these names were kept raw (and redacted in a later run: another doc id)."""
    settings, _, store = env
    src = tmp_path / "first"
    src.mkdir()
    for n in ("cv_212_456_7890.txt", "card_4111_1111_1111_1111.txt"):
        (src / n).write_text("Plain content.")
    ingest_corpus(settings, str(src), store=store)
    doc_ids = sorted(load_chunks(settings, store).doc_id.str.replace(r"~[0-9a-f]{12}", "~", regex=True))
    assert doc_ids == ["card_<CREDIT_CARD>~.txt", "cv_<PHONE_NUMBER>~.txt"]


def test_a_name_that_is_not_utf8_is_kept_readable_and_fails_nothing(env, tmp_path):
    """Presidio raised on the surrogates such a name decodes to, and the whole run failed."""
    settings, _, store = env
    src = tmp_path / "latin1"
    src.mkdir()
    (src / "good.txt").write_text("A good document.")
    ingest_corpus(settings, str(src), store=store)
    (src / "good.txt").write_text("A good document, edited.")
    with open(bytes(src) + b"/cv ann.lee@example.com r\xe9sum\xe9.txt", "w") as f:
        f.write("Curriculum vitae.")
    r = ingest_corpus(settings, str(src), store=store)
    assert not r.skipped
    chunks = load_chunks(settings, store)
    assert set(chunks.text) == {"A good document, edited.", "Curriculum vitae."}
    (name,) = set(chunks.doc_id) - {"good.txt"}
    assert name.startswith("cv <EMAIL_ADDRESS> r\ufffdsum\ufffd~") and name.endswith(".txt")
    assert not ingest_corpus(settings, str(src), store=store).did_work


def test_a_document_with_no_token_to_index_is_recorded(env, tmp_path):
    """Private-use glyphs (a PDF font without a Unicode map) or zero-width spaces give no chunk: the document
    was counted but neither indexed nor named in the skip records."""
    settings, _, store = env
    src = tmp_path / "glyphs"
    src.mkdir()
    (src / "ok.txt").write_text("Plain content about retrieval systems.")
    (src / "glyphs.txt").write_text("\ue000\ue001\ue002 \ue003\ue004")
    records = [{"_id": "z1", "title": "", "text": "\u200b\u200b"}, {"_id": "ok1", "text": "Real."}]
    (src / "b.jsonl").write_text("".join(json.dumps(d) + "\n" for d in records))
    r = ingest_corpus(settings, str(src), store=store)
    assert sorted(s["path"] for s in r.skipped) == ["b.jsonl:z1", "glyphs.txt:document"]
    assert all("no text to index" in s["reason"] for s in r.skipped)
    chunks = load_chunks(settings, store)
    assert set(chunks.doc_id) == {"ok.txt", "ok1"}
    # the glyph file's empty chunk table (object columns) made the integer columns objects
    assert all(pd.api.types.is_integer_dtype(chunks[c]) for c in ("ordinal", "char_start", "n_tokens"))
    assert ingest_corpus(settings, str(src), store=store).skipped == r.skipped  # kept with the file's record


def test_links_are_recorded_not_followed_and_hidden_folders_are_left_out(env, tmp_path):
    """A link to a file or folder (one could lead out of the source) was left out without a trace; files in
    hidden folders (`.git/description`, text) were ingested though hidden files were not. A named pipe was
    left out without a trace too (reading one waits for a writer): it is recorded, never opened."""
    settings, _, store = env
    src, elsewhere = tmp_path / "src", tmp_path / "elsewhere"
    (src / ".git").mkdir(parents=True)
    elsewhere.mkdir()
    (src / "ok.txt").write_text("Plain content about retrieval systems.")
    (src / ".git" / "description.txt").write_text("Unnamed repository; edit this file to name it.")
    (elsewhere / "secret.txt").write_text("Outside the source folder.")
    (src / "linked.txt").symlink_to(elsewhere / "secret.txt")
    (src / "linked_dir").symlink_to(elsewhere)
    os.mkfifo(src / "pipe.txt")
    r = ingest_corpus(settings, str(src), store=store)
    assert {s["path"]: s["reason"] for s in r.skipped} == {
        "linked.txt": "a symbolic link: not followed", "linked_dir": "a symbolic link: not followed",
        "pipe.txt": "a named pipe: not a regular file, not read",
    }  # fmt: skip
    assert set(load_chunks(settings, store).doc_id) == {"ok.txt"}
    assert r.files_seen == 4


def test_pii_an_inline_html_tag_splits_is_redacted(env, tmp_path):
    """HTML text was joined with a newline at every tag: `jane@<span>example.com</span>` and `<b>415</b>-555`
    reached the chunks, the keyword index and the vectors as they were."""
    settings, _, store = env
    src = tmp_path / "html"
    src.mkdir()
    (src / "page.html").write_text(
        "<html><body><p>Write to jane.doe@<span>example.com</span> or call <b>415</b>-555-2671.</p>"
        "<div>Card 4111 <i>1111</i> 1111 1111, or dave.smith@example<wbr>.com.</div><p>Hel<b>lo</b></p>"
        "<ul><li>first</li><li>second</li></ul>line<br>break</body></html>"
    )
    r = ingest_corpus(settings, str(src), store=store)
    text = " ".join(load_chunks(settings, store)["text"])
    for secret in ("jane.doe", "example.", "2671", "4111", "dave.smith"):
        assert secret not in text, (secret, text)
    assert r.pii_redacted["EMAIL_ADDRESS"] == 2 and r.pii_redacted["CREDIT_CARD"] == 1, r.pii_redacted
    assert "Hello" in text and "firstsecond" not in text and "linebreak" not in text, text  # blocks break


def test_an_address_whose_end_looks_like_an_extension_is_redacted_whole(env, tmp_path):
    """A part was redacted without its last dotted piece when that found PII: `.org` and `.com` were kept as
    extensions, and the address they ended, no longer an address without them, was kept raw."""
    settings, _, store = env
    src = tmp_path / "names"
    for folder in ("415.555.2671 alice@example.org", "To bob@example.com from carol@example.org"):
        (src / "clients" / folder).mkdir(parents=True)
        (src / "clients" / folder / "memo.txt").write_text("A plain memo.")
    (src / "notes 415-555-2671 dan@example.com").write_text("Notes.")
    r = ingest_corpus(settings, str(src), store=store)
    doc_ids = " ".join(load_chunks(settings, store).doc_id)
    kept = b"".join(store.get(k) for k in store.list()) + json.dumps(r.to_dict()).encode()
    for secret in ("alice@", "bob@", "carol@", "dan@", "555-2671", "555.2671", "example."):  # not "2671": hex
        assert secret not in doc_ids and secret.encode() not in kept, (secret, doc_ids)
    assert doc_ids.count("<EMAIL_ADDRESS>") == 3 and doc_ids.count("<PHONE_NUMBER>") == 1, doc_ids
    (skip,) = r.skipped  # `.com` is no file type
    assert skip["path"].startswith("notes <PHONE_NUMBER> <EMAIL_ADDRESS>~"), skip


def test_a_jsonl_record_python_cannot_read_fails_alone(env, tmp_path):
    """A number of 5,000 digits (ValueError) or `[` nested 100,000 deep (RecursionError) skipped the whole
    file: every good record in it was lost, or, in a file ingested before, its edits were never taken."""
    settings, _, store = env
    src = tmp_path / "jsonl"
    src.mkdir()
    good = [{"_id": "a", "text": "Aspirin."}, {"_id": "b", "text": "Bananas."}]
    bad = ['{"_id": "big", "n": ' + "9" * 5000 + "}", "[" * 100_000]
    lines = [json.dumps(good[0]), *bad, json.dumps(good[1])]
    (src / "records.jsonl").write_text("\n".join(lines) + "\n")
    r = ingest_corpus(settings, str(src), store=store)
    assert sorted(load_chunks(settings, store).doc_id) == ["a", "b"]
    reasons = {s["path"]: s["reason"] for s in r.skipped}
    assert "ValueError" in reasons["records.jsonl:line 2"], reasons
    assert "RecursionError" in reasons["records.jsonl:line 3"], reasons


def test_a_corpus_jsonl_among_documents_drops_none_of_them(env, tmp_path):
    """Any folder with a top-level corpus.jsonl was read as BEIR: every other file was dropped from the store
    (`files_removed` 2 after adding one), unrecorded. A BEIR folder needs its queries or qrels beside it, and
    what it leaves out is recorded."""
    settings, _, store = env
    src = tmp_path / "team"
    (src / "docs").mkdir(parents=True)
    (src / "beta.md").write_text("# Beta\n\nTantivy.")
    (src / "docs" / "alpha.txt").write_text("Alpha: Qdrant.")
    ingest_corpus(settings, str(src), store=store)
    (src / "corpus.jsonl").write_text(json.dumps({"_id": "c1", "text": "Claims."}) + "\n")
    r = ingest_corpus(settings, str(src), store=store)
    assert r.files_removed == 0 and not r.skipped
    assert sorted(load_chunks(settings, store).doc_id) == ["beta.md", "c1", "docs/alpha.txt"]
    (src / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "Which claims?"}) + "\n")
    r = ingest_corpus(settings, str(src), store=store)  # now a BEIR folder
    assert sorted(load_chunks(settings, store).doc_id) == ["c1"]
    left = "left out: a BEIR folder's corpus is corpus.jsonl"
    assert r.skipped == [{"path": "beta.md", "reason": left}, {"path": "docs/alpha.txt", "reason": left}]
    # a document whose name only starts like BEIR's queries is a document left out, with its record (it
    # was dropped without one); one that makes no folder BEIR is ingested
    (src / "queries_log.md").write_text("# Log\n\nQueries.")
    r = ingest_corpus(settings, str(src), store=store)
    assert {"path": "queries_log.md", "reason": left} in r.skipped
    (src / "queries.jsonl").unlink()
    ingest_corpus(settings, str(src), store=store)
    assert "queries_log.md" in set(load_chunks(settings, store).doc_id)


class AfterCommit(LocalStore):
    """A real local store with no lock, as on S3, on which another whole ingest runs right after this run
    commits its manifest, before it sweeps."""

    def __init__(self, root, after) -> None:
        super().__init__(root)
        self.after = after

    @contextlib.contextmanager
    def exclusive(self, name):
        yield True

    def put_if(self, key: str, data: bytes, tag: str | None) -> None:
        super().put_if(key, data, tag)
        if key == MANIFEST and self.after:
            after, self.after = self.after, None
            after()


def test_a_sweep_never_deletes_what_a_later_run_wrote_back(env, tmp_path):
    """Chunk keys were the content's: a run that started after another's commit and brought a file back to
    its earlier content wrote that content's old key, which the committing run had listed, and swept."""
    settings, _, store = env
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("First version.")
    ingest_corpus(settings, str(src), store=store)
    (src / "a.txt").write_text("Second version.")

    def back():
        (src / "a.txt").write_text("First version.")
        ingest_corpus(settings, str(src), store=LocalStore(tmp_path / "store"))

    ingest_corpus(settings, str(src), store=AfterCommit(tmp_path / "store", back))
    assert set(load_chunks(settings, store)["text"]) == {"First version."}


def test_a_source_with_no_document_removes_nothing_unless_asked(env, tmp_path):
    """An empty or mistyped folder, or one whose every file was skipped, removed every document from the
    store (and from every index after it) as files gone from the source."""
    settings, corpus, store = env
    first = ingest_corpus(settings, str(corpus), store=store)
    manifest, objects = store.get(MANIFEST), store.list()
    empty, unsupported = tmp_path / "empty", tmp_path / "unsupported"
    empty.mkdir()
    unsupported.mkdir()
    (unsupported / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 32)
    (unsupported / "blank.md").write_text("   \n")  # processed, no document: its chunk object goes again
    for src in (empty, unsupported):
        with pytest.raises(ValueError, match=f"remove all {first.docs_total} documents.*--allow-empty") as e:
            ingest_corpus(settings, str(src), store=store)
        assert type(e.value).__name__ == "EmptyCorpus"  # the module's own error, for callers to catch
        assert store.get(MANIFEST) == manifest and store.list() == objects, src
        # why the files were skipped was in no message: the first is said
        assert (src == empty) != ("skipped, first blank.md: " in str(e.value)), str(e.value)
    assert len(load_chunks(settings, store)) == first.chunks_total
    r = ingest_corpus(settings, str(empty), store=store, allow_empty=True)
    assert r.docs_total == 0 and r.files_removed == first.files_seen
    assert load_chunks(settings, store).empty
    assert ingest_corpus(settings, str(empty), store=store).docs_total == 0  # nothing left to lose


def test_a_file_given_as_the_source_is_named_a_file(env, tmp_path):
    """`ingest f.txt` said "corpus folder not found" of a file that is there."""
    settings, corpus, store = env
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        ingest_corpus(settings, str(corpus / "notes.txt"), store=store)
    with pytest.raises(FileNotFoundError, match="not found"):
        ingest_corpus(settings, str(tmp_path / "nowhere"), store=store)


def test_a_phone_number_with_spaced_dashes_is_redacted(env, tmp_path):
    """The phone trigger let at most 3 separators stand between two digits: "(415) - 555 - 2671" reached the
    stored chunks and the manifest's file names in clear, though Presidio reads it as a number."""
    settings, _, _ = env
    src = tmp_path / "src"
    src.mkdir()
    text = "Front desk: (415) - 555 - 2671. Night line: 415 -- 555 -- 2672."
    (src / "Call (415) - 555 - 2671.txt").write_text(text)
    store = LocalStore(tmp_path / "store")
    r = ingest_corpus(settings, str(src), store=store)
    assert r.pii_redacted.get("PHONE_NUMBER", 0) >= 2, r.pii_redacted
    kept = b"".join(p.read_bytes() for p in (tmp_path / "store").rglob("*") if p.is_file())
    chunks = load_chunks(settings, store)
    # with the space before them: the store's names and ids hold random hex, where a bare "2671" turns up
    for digits in (b" 2671", b" 2672", b"(415)", b"555 -"):
        assert digits not in kept and digits.decode() not in " ".join([*chunks["text"], *chunks["doc_id"]])


class FailsOnce(LocalStore):
    """A real local store whose first chunk write times out, as an S3 store under load may."""

    failed = False

    def put(self, key: str, data: bytes) -> None:
        if key.startswith(CHUNKS_PREFIX) and not FailsOnce.failed:
            FailsOnce.failed = True
            raise TimeoutError("store timed out")
        super().put(key, data)


def test_a_new_file_a_store_error_skipped_is_tried_again_next_run(env, tmp_path):
    """A file whose chunks a store error kept out was recorded with its content hash: every later run took it
    for unchanged and skipped it again, for good."""
    settings, _, _ = env
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("First file.")
    ingest_corpus(settings, str(src), store=LocalStore(tmp_path / "store"))
    (src / "b.txt").write_text("Second file, new.")
    r = ingest_corpus(settings, str(src), store=FailsOnce(tmp_path / "store"))
    assert [(s["path"], s["reason"]) for s in r.skipped] == [
        ("b.txt", "error: TimeoutError: store timed out")
    ]
    r = ingest_corpus(settings, str(src), store=LocalStore(tmp_path / "store"))
    assert r.files_processed == 1 and not r.skipped, r
    assert set(load_chunks(settings, LocalStore(tmp_path / "store"))["doc_id"]) == {"a.txt", "b.txt"}
    again = ingest_corpus(settings, str(src), store=LocalStore(tmp_path / "store"))
    assert not again.did_work and again.files_unchanged == 2


def test_an_overlap_as_long_as_the_chunk_is_a_settings_error():
    """SM_CHUNK_OVERLAP >= SM_CHUNK_TOKENS failed every file of an ingest, each recorded skipped, exit 0."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="chunk_overlap\n.*must be less than chunk_tokens \\(64\\)"):
        Settings(chunk_tokens=64, chunk_overlap=64)
    assert Settings(chunk_tokens=64, chunk_overlap=63).chunk_overlap == 63


def test_an_s3_endpoint_with_a_scheme_is_a_settings_error():
    """The minio client takes host:port; "http://host:9000" was its bare "path in endpoint is not allowed"."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="s3_endpoint\n.*host:port, without a scheme"):
        Settings(s3_endpoint="http://127.0.0.1:9000")
    assert Settings(s3_endpoint="minio.internal:9000").s3_endpoint == "minio.internal:9000"


def test_a_store_inside_its_source_is_not_ingested_as_documents(env, tmp_path):
    """With the store inside the source folder (or at the root of its bucket), the store's manifest, chunks
    and name key were read as documents, and every run found them changed and committed again."""
    settings, _, _ = env
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("First file.")
    store = LocalStore(src / "store")
    first = ingest_corpus(settings, str(src), store=store)
    assert first.files_seen == 1 and not first.skipped
    for _ in range(2):
        again = ingest_corpus(settings, str(src), store=store)
        assert not again.did_work and again.files_seen == 1 and not again.skipped, again
    assert set(load_chunks(settings, store)["doc_id"]) == {"a.txt"}


def test_a_beir_record_whose_id_is_no_string_is_skipped_and_recorded(env, tmp_path):
    """A null `_id` was stored as the document "None" (and a later record with the _id "None" dropped as its
    duplicate); "", a list and true were ids too."""
    settings, _, _ = env
    src = tmp_path / "src"
    src.mkdir()
    records = [{"_id": None, "text": "no id"}, {"_id": "None", "text": "The id is the word None."},
               {"_id": "", "text": "empty id"}, {"_id": ["ann.lee@example.com"], "text": "a list"},
               {"_id": True, "text": "true"}, {"_id": 7, "text": "An integer id."}]  # fmt: skip
    (src / "docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    r = ingest_corpus(settings, str(src), store=LocalStore(tmp_path / "store"))
    chunks = load_chunks(settings, LocalStore(tmp_path / "store"))
    assert dict(zip(chunks["doc_id"], chunks["text"], strict=True)) == {
        "None": "The id is the word None.", "7": "An integer id."}  # fmt: skip
    reasons = " ".join(s["reason"] for s in r.skipped)
    for line in (1, 3, 4, 5):
        assert f"line {line}: _id must be a non-empty string or an integer" in reasons, reasons
    # a rejected _id is not quoted: the skip records reach the manifest and Dagster, past no redaction
    assert "example.com" not in reasons and "got list" in reasons, reasons


def test_a_file_deleted_with_a_config_change_is_counted_removed(env, tmp_path):
    settings, _, _ = env
    src = _two_files_ingested(settings, tmp_path, "Second file.")
    (src / "b.txt").unlink()
    r = ingest_corpus(
        settings.model_copy(update={"chunk_tokens": 48}), str(src), store=LocalStore(tmp_path / "store")
    )
    assert r.files_removed == 1


def test_two_runs_write_the_demo_corpus_at_once(tmp_path):
    """`corpus_chunks` writes the demo corpus on every run, through one fixed temp name per topic: two runs at
    once (the schedule and the sensor) renamed each other's temp file away and one crashed."""
    from concurrent.futures import ThreadPoolExecutor

    from pipelines.demo_corpus import write_demo_corpus

    alone = sorted(p.name for p in write_demo_corpus(tmp_path / "alone", limit=80).iterdir())
    assert len(alone) > 70 and all(n.endswith(".md") for n in alone)
    for trial in range(3):
        folder = tmp_path / str(trial)
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(write_demo_corpus, [folder, folder], [80, 80]))  # re-raises a crash
        assert sorted(p.name for p in folder.iterdir()) == alone  # no temp file left


def _deny_listing(monkeypatch, folder) -> None:
    """Listing `folder` fails as without permission (root reads any folder: the test takes it away where
    the listing asks)."""
    import os

    scandir = os.scandir

    def denied(path="."):
        if os.fspath(path) == str(folder):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", denied)


def test_a_folder_that_cannot_be_listed_keeps_its_files(env, tmp_path, monkeypatch):
    """`Path.rglob` passes over a folder it may not open, in silence: its files looked removed, and ingest
    deleted their documents from the store with no record. (Root reads any folder, so the test takes the
    permission away where the listing asks for it.)"""

    settings, _, _ = env
    src = _two_files_ingested(settings, tmp_path, "Second file.")
    (src / "team").mkdir()
    (src / "team" / "c.txt").write_text("Third file, in a folder.")
    ingest_corpus(settings, str(src), store=LocalStore(tmp_path / "store"))
    _deny_listing(monkeypatch, src / "team")
    (src / "b.txt").unlink()  # removed meanwhile: its document goes
    r = ingest_corpus(settings, str(src), store=LocalStore(tmp_path / "store"))
    assert set(load_chunks(settings, LocalStore(tmp_path / "store"))["doc_id"]) == {"a.txt", "team/c.txt"}
    assert r.files_removed == 1
    assert [(s["path"], "could not be read" in s["reason"]) for s in r.skipped] == [("team/", True)]
    monkeypatch.undo()
    again = ingest_corpus(settings, str(src), store=LocalStore(tmp_path / "store"))
    assert not again.did_work and not again.skipped


def test_an_unreadable_folder_keeps_its_own_files_not_those_of_a_folder_redacted_alike(
    env, tmp_path, monkeypatch
):
    """Two folders named by addresses are both `<EMAIL_ADDRESS>/` in the store: while one could not be
    listed, the other's deleted file was kept too, by the name they share."""
    import shutil

    settings, _, _ = env
    src = tmp_path / "src"
    for folder in ("ann.lee@example.com", "bob.lee@example.com"):
        (src / folder).mkdir(parents=True)
        (src / folder / "notes.txt").write_text(f"Notes of {folder[:3]} about retrieval.")
    store = LocalStore(tmp_path / "store")
    ingest_corpus(settings, str(src), store=store)
    manifest = json.loads(store.get(MANIFEST))  # as written before records kept their folders' digests
    older = {n: {k: v for k, v in f.items() if k != "dirs"} for n, f in manifest["files"].items()}
    store.put(MANIFEST, json.dumps({**manifest, "files": older}).encode())
    again = ingest_corpus(settings, str(src), store=store)  # nothing to redo: the digests are written, once
    assert not again.did_work and all("dirs" in f for f in json.loads(store.get(MANIFEST))["files"].values())
    shutil.rmtree(src / "bob.lee@example.com")  # removed on request
    _deny_listing(monkeypatch, src / "ann.lee@example.com")
    r = ingest_corpus(settings, str(src), store=store)
    assert r.files_removed == 1 and set(load_chunks(settings, store)["text"]) == {
        "Notes of ann about retrieval."
    }


def test_text_saved_as_utf16_or_utf32_with_its_mark_is_read_and_redacted(env, tmp_path):
    """Windows' "Unicode" (UTF-16 LE with a byte-order mark) was skipped as binary content; a BEIR file in
    UTF-16 too. Without the mark it stays unreadable, and says what it lacks."""
    settings, _, _ = env
    src = tmp_path / "src"
    src.mkdir()
    (src / "notes.txt").write_bytes("Café notes: write to jane.doe@example.com.".encode("utf-16"))
    (src / "plan.md").write_bytes("# Plan\nStep one, € budget.".encode("utf-32"))
    (src / "corpus.jsonl").write_bytes(
        '{"_id": "d1", "title": "T", "text": "Naïve claim."}\n'.encode("utf-16")
    )
    (src / "bare.txt").write_bytes("No mark here.".encode("utf-16-le"))
    store = LocalStore(tmp_path / "store")
    r = ingest_corpus(settings, str(src), store=store)
    assert [(s["path"], s["reason"]) for s in r.skipped] == [
        ("bare.txt", "binary content (NUL bytes; UTF-16 text needs its byte-order mark)")
    ], r.skipped
    texts = set(load_chunks(settings, store)["text"])
    assert {"Café notes: write to <EMAIL_ADDRESS>.", "# Plan\nStep one, € budget."} < texts, texts
    assert any("Naïve claim." in t for t in texts), texts


def test_nuls_that_end_a_finished_file_are_no_sync_padding(env, tmp_path):
    """Any file ending in NUL was taken for one a sync had begun, its last version kept for good: a finished
    PDF with NULs after %%EOF, and text saved again as UTF-16 (which ends in NUL) and so unreadable."""
    settings, _, _ = env
    src = tmp_path / "src"
    src.mkdir()
    (src / "report.pdf").write_bytes(tiny_pdf("Budget version one"))
    (src / "notes.txt").write_text("Secret draft, version one.")
    store = LocalStore(tmp_path / "store")
    ingest_corpus(settings, str(src), store=store)
    (src / "report.pdf").write_bytes(tiny_pdf("Budget version two") + b"\x00" * 512)
    (src / "notes.txt").write_bytes("Secret draft, version two.".encode("utf-16-le"))
    r = ingest_corpus(settings, str(src), store=store)
    assert [(s["path"], "kept" in s["reason"]) for s in r.skipped] == [("notes.txt", False)], r.skipped
    assert set(load_chunks(settings, store)["text"]) == {"Budget version two"}
