"""Knowledge graph of chunks and entities: ladybug (embedded, Cypher; default) or NebulaGraph (nGQL).

Nodes: Chunk(id, doc_id), Entity(name, df). Edges: Chunk -MENTIONS-> Entity (provenance: which chunk says
what), Entity -RELATED-> Entity (co-occurrence in `weight` chunks, both directions). Entities seen in fewer
than `min_df` chunks or in more than `max_df_frac` of them (and 20) are dropped: the first are noise, the
second are too common to connect anything. The graph is rebuilt whenever the chunk set or the extraction
changes (extraction is cheap and the co-occurrence weights are corpus-wide); an unchanged chunk set does no
work. A build records its fingerprint last, so one that stopped half way is redone by the next sync; the
embedded graph is built beside the last one and moved into place, so until then the last graph serves whole.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import os
import shutil
import time
from collections import Counter, defaultdict
from itertools import combinations
from operator import itemgetter
from pathlib import Path

import pandas as pd

from pipelines.corpus.pii import PLACEHOLDER
from pipelines.index.base import IndexInUse, IndexMissing, IndexReport, ScoredChunk, require_index
from pipelines.index.entities import RuleEntityExtractor
from pipelines.settings import Settings

GRAPH_VERSION = 4  # bump when extraction or the graph's parameters change: every graph is rebuilt


def graph_fingerprint(chunk_ids, extractor=None) -> str:
    """What a built graph holds: its chunk ids, the extractor (and its model) and GRAPH_VERSION."""
    extractor = extractor or RuleEntityExtractor()
    h = hashlib.sha256(f"{GRAPH_VERSION}:{extractor.name}:{getattr(extractor, 'model', '')}".encode())
    for cid in sorted(chunk_ids):
        h.update(cid.encode() + b"\0")
    return h.hexdigest()[:32]


def extract_graph(chunks: pd.DataFrame, extractor=None, min_df: int = 2, max_df_frac: float = 0.05,
                  max_per_chunk: int = 12) -> dict[str, pd.DataFrame]:  # fmt: skip
    """Tables for the graph: chunk, entity (name, df), mentions (from chunk, to entity) and related."""
    extractor = extractor or RuleEntityExtractor()
    per_chunk = [
        extractor.extract(PLACEHOLDER.sub(";", f"{t}. {x}" if t else x))  # "<EMAIL_ADDRESS>": no entity
        for t, x in zip(chunks["title"].fillna(""), chunks["text"], strict=True)
    ]
    df = Counter(e for ents in per_chunk for e in set(ents))
    max_df = max(min_df, 20, int(max_df_frac * len(chunks)))  # the fraction only bites on big corpora
    keep = {e for e, n in df.items() if min_df <= n <= max_df}
    mentions: list[tuple[str, str]] = []
    pairs: Counter[tuple[str, str]] = Counter()
    for cid, ents in zip(chunks["chunk_id"], per_chunk, strict=True):
        kept = [e for e in dict.fromkeys(ents) if e in keep]
        mentions.extend((cid, e) for e in kept)
        top = sorted(kept, key=lambda e: df[e])[:max_per_chunk]  # rarest first: most specific
        pairs.update(tuple(sorted(p)) for p in combinations(top, 2))
    related = [(a, b, w) for (a, b), w in pairs.items() if w >= 2]
    related += [(b, a, w) for a, b, w in related]
    return {
        "chunk": pd.DataFrame({"id": chunks["chunk_id"].values, "doc_id": chunks["doc_id"].values}),
        "entity": pd.DataFrame(
            {"name": sorted(keep), "df": [df[e] for e in sorted(keep)]}, columns=["name", "df"]
        ),
        "mentions": pd.DataFrame(mentions, columns=["from", "to"]),
        "related": pd.DataFrame(related, columns=["from", "to", "weight"]),
    }


class LadybugGraph:
    backend = "ladybug"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.location = str(self.path)
        self._open()

    def _open(self) -> None:
        self.db, self.conn = self._connect(self.path)

    @staticmethod
    def _connect(path: Path):
        import ladybug

        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = ladybug.Database(str(path))
        except RuntimeError as e:  # "IO exception: Could not set lock on file : <path> (Lock is held by ...)"
            if "Could not set lock on file" not in str(e):
                raise
            raise IndexInUse("graph", path) from None
        conn = ladybug.Connection(db)
        result = conn.execute("CALL show_tables() RETURN name")
        assert not isinstance(result, list), "one statement per query"
        tables = set(result.get_as_df()["name"])
        if "Chunk" not in tables:
            for stmt in (
                "CREATE NODE TABLE Chunk(id STRING PRIMARY KEY, doc_id STRING)",
                "CREATE NODE TABLE Entity(name STRING PRIMARY KEY, df INT64)",
                "CREATE REL TABLE MENTIONS(FROM Chunk TO Entity)",
                "CREATE REL TABLE RELATED(FROM Entity TO Entity, weight INT64)",
            ):
                conn.execute(stmt)
        if "Build" not in tables:  # also in a graph from before builds were recorded: it is rebuilt once
            conn.execute("CREATE NODE TABLE Build(id STRING PRIMARY KEY)")
        return db, conn

    def close(self) -> None:
        self.conn.close()
        self.db.close()

    def _df(self, query: str, params: dict | None = None) -> pd.DataFrame:
        result = self.conn.execute(query, params or {})
        assert not isinstance(result, list), "one statement per query"
        return result.get_as_df()

    def indexed_ids(self) -> set[str]:
        return set(self._df("MATCH (c:Chunk) RETURN c.id AS id")["id"])

    def has_build(self, fingerprint: str) -> bool:
        return len(self._df("MATCH (b:Build) WHERE b.id = $id RETURN b.id", {"id": fingerprint})) > 0

    def replace(self, tables: dict[str, pd.DataFrame], fingerprint: str = "") -> None:
        """Build the new graph beside the old one (bulk COPY from data frames, `fingerprint` recorded last),
        then move it into place: a build that fails leaves the old graph whole."""
        new = self.path.with_name(f".{self.path.name}.building")
        _remove_db(new)
        try:
            db, conn = self._connect(new)
            try:
                for table, key in (
                    ("Chunk", "chunk"),
                    ("Entity", "entity"),
                    ("MENTIONS", "mentions"),
                    ("RELATED", "related"),
                ):
                    frame = tables[key]
                    if len(frame):
                        conn.execute(f"COPY {table} FROM frame")
                if fingerprint:
                    conn.execute("CREATE (:Build {id: $id})", {"id": fingerprint})
            finally:
                conn.close()
                db.close()
        except BaseException:
            _remove_db(new)
            raise
        self.close()
        _remove_db(self.path)
        os.replace(new, self.path)  # closed, the new database is this one file
        self._open()

    def entities(self, names: list[str]) -> dict[str, int]:
        if not names:
            return {}
        d = self._df("MATCH (e:Entity) WHERE e.name IN $n RETURN e.name AS name, e.df AS df", {"n": names})
        return dict(zip(d["name"], d["df"], strict=True))

    def neighbours(self, names: list[str], per_entity: int = 5) -> pd.DataFrame:
        q = ("MATCH (a:Entity)-[r:RELATED]->(b:Entity) WHERE a.name IN $n AND NOT b.name IN $n "
             "RETURN a.name AS src, b.name AS name, b.df AS df, r.weight AS weight")  # fmt: skip
        d = self._df(q, {"n": names})
        return d.sort_values("weight", ascending=False).groupby("src").head(per_entity)

    def mentions(self, names: list[str]) -> pd.DataFrame:
        q = (
            "MATCH (c:Chunk)-[:MENTIONS]->(e:Entity) WHERE e.name IN $n "
            "RETURN c.id AS chunk_id, e.name AS name"
        )
        return self._df(q, {"n": names})


VID_BYTES = 256  # NebulaGraph's vertex ids: chunk ids and entity names (entities.MAX_BYTES is less)
NEBULA_TIMEOUT_MS = 300_000  # per connection or statement (a rebuild inserts in batches): a stall fails


class NebulaGraph:
    """The same graph on NebulaGraph through `nebula3-python` (nGQL). Vertex ids are the chunk ids and
    entity names; a full replace clears the space's data. Written against the official client; not run
    here (no NebulaGraph server on the development machine)."""

    backend = "nebula"

    def __init__(self, address: str, user: str, password: str, space: str, must_exist: bool = False) -> None:
        from nebula3.Config import Config
        from nebula3.gclient.net import ConnectionPool

        host, port = address.rsplit(":", 1)
        self.pool = ConnectionPool()
        try:
            config = Config()
            config.timeout = NEBULA_TIMEOUT_MS  # the client's default, 0, waits for a stalled graphd forever
            ok = self.pool.init([(host, int(port))], config)
        except Exception as e:  # the client raises when no server answers
            raise ConnectionError(f"cannot reach NebulaGraph at {address}: {type(e).__name__}") from None
        if not ok:
            raise ConnectionError(f"cannot reach NebulaGraph at {address}")
        self.user, self.password, self.space = user, password, space
        self.location = f"nebula://{address}/{space}"
        if must_exist and space not in self._spaces():  # to search: no space made on the spot, as none built
            self.pool.close()
            raise IndexMissing("graph", self.location)
        # a new space, tag or index takes effect after two heartbeats (20 s by default): until then, retry (a
        # fresh cluster answers "Host not enough!" until storaged's first heartbeat)
        space_ddl = f"CREATE SPACE IF NOT EXISTS {space}(vid_type=FIXED_STRING({VID_BYTES}))"
        self._run_when_ready(space_ddl, use=False)
        self._run_when_ready(
            "CREATE TAG IF NOT EXISTS chunk(doc_id string); "
            "CREATE TAG IF NOT EXISTS entity(name string, df int); "
            "CREATE TAG IF NOT EXISTS build(); CREATE EDGE IF NOT EXISTS mentions(); "
            "CREATE EDGE IF NOT EXISTS related(weight int);"
        )
        self._run_when_ready("CREATE TAG INDEX IF NOT EXISTS chunk_ids ON chunk()")  # LOOKUP needs an index
        self._run_when_ready("LOOKUP ON chunk YIELD id(vertex) AS id | LIMIT 1")

    def _run(self, ngql: str, use: bool = True):
        with self.pool.session_context(self.user, self.password) as s:
            r = s.execute((f"USE {self.space}; " if use else "") + ngql)
            if not r.is_succeeded():
                raise RuntimeError(f"nGQL failed: {r.error_msg()}")
            return r

    def _run_when_ready(self, ngql: str, timeout_s: float = 40.0, use: bool = True):
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self._run(ngql, use=use)
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(2)

    def _spaces(self) -> set[str]:
        return {v.as_string() for v in self._run("SHOW SPACES", use=False).column_values("Name")}

    @staticmethod
    def _q(s: str) -> str:
        """A string literal: nGQL's lexer takes no raw line break inside one (a file name may hold one)."""
        out = str(s).replace("\\", "\\\\").replace('"', '\\"')
        return '"' + out.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t") + '"'

    def close(self) -> None:
        self.pool.close()

    def indexed_ids(self) -> set[str]:
        r = self._run("LOOKUP ON chunk YIELD id(vertex) AS id")
        return {v.as_string() for v in r.column_values("id")}

    def has_build(self, fingerprint: str) -> bool:
        r = self._run(f"FETCH PROP ON build {self._q(fingerprint)} YIELD id(vertex) AS id")
        return r.row_size() > 0

    @staticmethod
    def check_ids(tables: dict[str, pd.DataFrame]) -> None:
        """Every vertex id fits the space's FIXED_STRING: else a clear error, before anything is cleared."""
        ids = [*tables["chunk"]["id"], *tables["entity"]["name"]]
        if long := [str(v) for v in ids if len(str(v).encode()) > VID_BYTES]:
            raise ValueError(
                f"{len(long)} vertex ids are longer than NebulaGraph's {VID_BYTES} bytes (first: "
                f"{long[0][:80]}...); shorten the document ids (their paths) or use the embedded graph"
            )

    def replace(self, tables: dict[str, pd.DataFrame], fingerprint: str = "", batch: int = 500) -> None:
        self.check_ids(tables)
        self._run(f"CLEAR SPACE {self.space}", use=False)  # every vertex and edge; the schema stays
        q = self._q
        rows = {
            "INSERT VERTEX chunk(doc_id) VALUES ": [
                f"{q(r.id)}:({q(r.doc_id)})" for r in tables["chunk"].itertuples()
            ],
            "INSERT VERTEX entity(name, df) VALUES ": [
                f"{q(r.name)}:({q(r.name)}, {int(r.df)})" for r in tables["entity"].itertuples()
            ],
            "INSERT EDGE mentions() VALUES ": [f"{q(a)}->{q(b)}:()" for a, b in tables["mentions"].values],
            "INSERT EDGE related(weight) VALUES ": [
                f"{q(a)}->{q(b)}:({int(w)})" for a, b, w in tables["related"].values
            ],
        }
        if fingerprint:  # last: a build that stopped half way has none, and the next sync redoes it
            rows["INSERT VERTEX build() VALUES "] = [f"{q(fingerprint)}:()"]
        for head, values in rows.items():
            for i in range(0, len(values), batch):
                self._run(head + ", ".join(values[i : i + batch]))

    def entities(self, names: list[str]) -> dict[str, int]:
        if not names:
            return {}
        r = self._run(
            f"FETCH PROP ON entity {', '.join(map(self._q, names))} YIELD entity.name AS n, entity.df AS d"
        )
        return {
            n.as_string(): d.as_int() for n, d in zip(r.column_values("n"), r.column_values("d"), strict=True)
        }

    def neighbours(self, names: list[str], per_entity: int = 5) -> pd.DataFrame:
        r = self._run(
            f"GO FROM {', '.join(map(self._q, names))} OVER related "
            "YIELD src(edge) AS src, dst(edge) AS name, "
            "$$.entity.df AS df, related.weight AS weight"
        )
        d = pd.DataFrame({c: [v.cast() for v in r.column_values(c)] for c in ("src", "name", "df", "weight")})
        d = d[~d["name"].isin(names)]
        return d.sort_values("weight", ascending=False).groupby("src").head(per_entity)

    def mentions(self, names: list[str]) -> pd.DataFrame:
        r = self._run(
            f"GO FROM {', '.join(map(self._q, names))} OVER mentions REVERSELY YIELD src(edge) AS chunk_id, "
            "dst(edge) AS name"
        )
        return pd.DataFrame({c: [v.cast() for v in r.column_values(c)] for c in ("chunk_id", "name")})


def graph_search(graph, query: str, n_chunks: int, k: int = 100, extractor=None,
                 neighbour_discount: float = 0.5, per_entity: int = 5) -> list[ScoredChunk]:  # fmt: skip
    """Query entities -> their RELATED neighbours -> the chunks that mention either, scored by summed IDF
    (neighbours discounted by relation strength): the multi-hop evidence a keyword or vector match misses."""
    extractor = extractor or RuleEntityExtractor()
    known = graph.entities(extractor.extract(query))
    if not known:
        return []
    weight = {e: math.log(1 + n_chunks / df) for e, df in known.items()}
    nb = graph.neighbours(list(known), per_entity)
    if len(nb):
        top = nb.groupby("src")["weight"].transform("max")
        for name, df, w, t in zip(nb["name"], nb["df"], nb["weight"], top, strict=True):
            weight[name] = max(
                weight.get(name, 0.0), neighbour_discount * (w / t) * math.log(1 + n_chunks / df)
            )
    m = graph.mentions(list(weight))
    scores: dict[str, float] = defaultdict(float)
    for cid, name in zip(m["chunk_id"], m["name"], strict=True):
        scores[cid] += weight[name]
    return [ScoredChunk(c, float(s)) for c, s in heapq.nlargest(k, scores.items(), key=itemgetter(1))]


def _remove_db(path: Path) -> None:
    """An embedded database: its file and side files (a write-ahead log), or the folder of older versions."""
    if path.is_dir():
        shutil.rmtree(path)
    for p in path.parent.glob(path.name + "*"):
        if p.is_file() and p.name.removeprefix(path.name)[:1] in ("", "."):
            p.unlink()


def open_graph(settings: Settings, index_dir: str | Path | None = None, must_exist: bool = False):
    if settings.graph_backend == "nebula":
        return NebulaGraph(
            settings.nebula_address,
            settings.nebula_user,
            settings.nebula_password.get_secret_value(),
            settings.nebula_space,
            must_exist=must_exist,
        )
    path = Path(index_dir or settings.run_dir / "index") / "graph" / "kg.lbug"
    return LadybugGraph(require_index(path, "graph", must_exist))


def sync_graph(graph, chunks: pd.DataFrame, extractor=None) -> IndexReport:
    t0 = time.perf_counter()
    have, want = graph.indexed_ids(), set(chunks["chunk_id"])
    fingerprint = graph_fingerprint(want, extractor)
    report = IndexReport(graph.backend, graph.location, total=len(want), version=fingerprint[:16])
    if graph.has_build(fingerprint):
        report.unchanged = len(want)
    else:
        graph.replace(extract_graph(chunks, extractor), fingerprint)
        report.added, report.deleted = len(want), len(have - want)  # a rebuild extracts every chunk again
    report.seconds = round(time.perf_counter() - t0, 3)
    return report
