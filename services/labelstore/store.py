"""The label store's core over pymilvus (no gRPC): datasets, rows, labels, search, scans, near-duplicates.

Same behaviour on Milvus Lite and a Milvus server: reads that must be exact (Get, Count, the reads before
a write, scans) use Strong consistency; searches use Session consistency (a client sees its own writes
without waiting for the cluster-wide timestamp). Milvus upsert replaces whole rows, so every write of an
existing row first reads it and carries its labels over.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pymilvus import MilvusClient
from pymilvus.exceptions import MilvusException

from services.labelstore import filters
from services.labelstore.duplicates import Group, group_pairs
from services.labelstore.schema import (
    MAX_DIM,
    META_COLLECTION,
    SCALAR_FIELDS,
    Dataset,
    dataset_schema,
    index_params,
    meta_index_params,
    meta_schema,
    search_params,
)
from services.labelstore.settings import LabelStoreSettings
from tagalong.runtime import vectors
from tagalong.runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from tagalong.runtime.ids import id_from_sha256
from tagalong.runtime.settings import SettingError
from tagalong.v1 import common_pb2, labelstore_pb2

log = logging.getLogger(__name__)

HUMAN = common_pb2.LABEL_SOURCE_HUMAN
NONE = common_pb2.LABEL_SOURCE_NONE
STRONG = "Strong"
SESSION = "Session"
HIT_FIELDS = ["uri", "label", "label_source", "confidence", "created_at_ms"]
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1000  # ids per `id in [...]` expression and queries per search call
_NOT_FOUND = re.compile(r"collection not found|can't find collection|collection .* does not exist", re.I)


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class UpsertResult:
    upserted: int = 0
    inserted: int = 0
    ids: list[int] = field(default_factory=list)
    duplicates: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class SetLabelsResult:
    changed: int = 0
    unchanged: int = 0
    skipped_human: int = 0
    missing_ids: list[int] = field(default_factory=list)
    changed_ids: list[int] = field(default_factory=list)


def _chunks(seq: Sequence[Any] | np.ndarray, size: int) -> Iterator[Any]:
    for start in range(0, len(seq), size):
        yield seq[start:start + size]


def _id_list(ids: Sequence[int]) -> str:
    return f"id in [{', '.join(str(int(i)) for i in ids)}]"


class LabelStore:
    """One Milvus client and the datasets in it."""

    def __init__(self, settings: LabelStoreSettings) -> None:
        self.settings = settings
        self._client: MilvusClient | None = None
        self._datasets: dict[str, Dataset] = {}
        self._loaded: set[str] = set()
        self._ddl_lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._unflushed: dict[str, int] = {}  # Milvus Lite: rows written per collection since its last flush
        self._meta = settings.collection_prefix + META_COLLECTION

    # ---- connection -------------------------------------------------------------------------------------
    def connect(self) -> None:
        """Reach Milvus and make sure the metadata collection exists; SettingError when it cannot."""
        s = self.settings
        kwargs: dict[str, Any] = {"uri": s.milvus_uri, "timeout": s.connect_timeout_seconds}
        if s.milvus_token is not None:
            kwargs["token"] = s.milvus_token.get_secret_value()
        try:
            if not s.is_server:
                Path(s.milvus_uri).expanduser().parent.mkdir(parents=True, exist_ok=True)
            client = MilvusClient(**kwargs)
            client.list_collections(timeout=s.connect_timeout_seconds)
        except Exception as err:  # noqa: BLE001 - any failure here means the setting is unusable
            problem = f"cannot reach Milvus at {s.milvus_uri}: {err}"
            raise SettingError("TAGALONG_LABELSTORE_MILVUS_URI", problem) from None
        self._client = client
        if not client.has_collection(self._meta):
            client.create_collection(
                self._meta, schema=meta_schema(), index_params=meta_index_params(client), consistency_level=STRONG
            )
        client.load_collection(self._meta)
        log.info("connected to Milvus at %s (%s)", s.milvus_uri, "server" if s.is_server else "lite")

    def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
        self._client = None
        self._datasets.clear()
        self._loaded.clear()

    @property
    def client(self) -> MilvusClient:
        if self._client is None:
            raise FailedPrecondition("the label store is not connected to Milvus")
        return self._client

    @contextlib.contextmanager
    def _on(self, ds: Dataset) -> Iterator[None]:
        """Map 'collection not found' (dropped by another replica) to NOT_FOUND and forget the dataset."""
        try:
            yield
        except MilvusException as err:
            if _NOT_FOUND.search(str(err)):
                self._forget(ds.name)
                raise NotFound(f"dataset {ds.name!r} not found") from None
            raise

    def _forget(self, name: str) -> None:
        ds = self._datasets.pop(name, None)
        if ds is not None:
            self._loaded.discard(ds.collection)
            self._unflushed.pop(ds.collection, None)

    def _lock(self, name: str) -> threading.Lock:
        with self._ddl_lock:
            return self._locks.setdefault(name, threading.Lock())

    # ---- datasets ---------------------------------------------------------------------------------------
    def _meta_row(self, name: str) -> dict[str, Any] | None:
        rows = self.client.query(
            self._meta, filter=f"name == {filters.quote(name)}",
            output_fields=["name", "dim", "model_id", "index_type", "created_at_ms"], consistency_level=STRONG,
        )
        return rows[0] if rows else None

    def _collection_name(self, name: str) -> str:
        return f"{self.settings.collection_prefix}ds_{name}"

    def _to_dataset(self, row: dict[str, Any]) -> Dataset:
        return Dataset(
            name=row["name"], dim=int(row["dim"]), model_id=row["model_id"], index_type=row["index_type"],
            collection=self._collection_name(row["name"]), created_at_ms=int(row["created_at_ms"]),
        )

    def forget_loaded(self) -> None:
        """Treat every collection as not loaded (after Milvus answered "not loaded"): the next use loads it."""
        self._loaded.clear()

    def dataset(self, name: str) -> Dataset:
        """The dataset (loaded for reads); NOT_FOUND when unknown."""
        filters.dataset_name(name)
        ds = self._datasets.get(name)
        if ds is None:
            row = self._meta_row(name)
            if row is None or not self.client.has_collection(self._collection_name(name)):
                raise NotFound(f"dataset {name!r} not found")
            ds = self._to_dataset(row)
            self._datasets[name] = ds
        if ds.collection not in self._loaded:
            with self._on(ds):
                self.client.load_collection(ds.collection)
            self._loaded.add(ds.collection)
        return ds

    def ensure_dataset(self, name: str, dim: int, model_id: str) -> tuple[Dataset, bool]:
        filters.dataset_name(name)
        if not 0 < dim <= MAX_DIM:
            raise InvalidArgument(f"dim must be in 1..{MAX_DIM}, got {dim}")
        if not model_id:
            raise InvalidArgument("model_id is required")
        filters.text(model_id, "model_id", 256)
        with self._ddl_lock:
            row = self._meta_row(name)
            collection = self._collection_name(name)
            if row is not None:
                ds = self._to_dataset(row)
                if ds.dim != dim or ds.model_id != model_id:
                    raise FailedPrecondition(
                        f"dataset {name!r} exists with dim {ds.dim} and model {ds.model_id!r}, "
                        f"not dim {dim} and model {model_id!r}"
                    )
                if not self.client.has_collection(collection):  # a crash between the two writes
                    self._create_collection(collection, dim, ds.index_type)
                return ds, False
            index_type = self.settings.effective_index_type
            if self.client.has_collection(collection):
                # Left over from a crash before the metadata row was written: adopt it if it fits.
                index_type = self._adopt(collection, dim)
            else:
                self._create_collection(collection, dim, index_type)
            meta = {"name": name, "vector": [0.0] * 2, "dim": dim, "model_id": model_id, "index_type": index_type,
                    "created_at_ms": now_ms()}
            self.client.upsert(self._meta, [meta])
            ds = self._to_dataset(meta)
            self._datasets[name] = ds
            log.info("created dataset %s (dim %d, model %s, index %s)", name, dim, model_id, index_type)
            return ds, True

    def _create_collection(self, collection: str, dim: int, index_type: str) -> None:
        self.client.create_collection(
            collection, schema=dataset_schema(dim, self.settings),
            index_params=index_params(self.client, index_type, self.settings), consistency_level=STRONG,
        )
        self.client.load_collection(collection)
        self._loaded.add(collection)

    def _adopt(self, collection: str, dim: int) -> str:
        desc = self.client.describe_collection(collection)
        vector = next((f for f in desc["fields"] if f["name"] == "vector"), None)
        have = int(vector["params"]["dim"]) if vector else -1
        if have != dim:
            raise FailedPrecondition(f"collection {collection} exists with dim {have}; drop the dataset first")
        names = self.client.list_indexes(collection)
        info = self.client.describe_index(collection, names[0]) if names else {}
        return str(info.get("index_type", self.settings.effective_index_type))

    def list_datasets(self) -> list[tuple[Dataset, int]]:
        rows = self.client.query(
            self._meta, filter='name != ""', output_fields=["name", "dim", "model_id", "index_type", "created_at_ms"],
            consistency_level=STRONG,
        )
        out = []
        for row in sorted(rows, key=lambda r: r["name"]):
            try:
                ds = self.dataset(row["name"])
            except NotFound:
                continue
            out.append((ds, self.count(ds.name)))
        return out

    def drop_dataset(self, name: str) -> bool:
        filters.dataset_name(name)
        with self._ddl_lock:
            collection = self._collection_name(name)
            existed = self._meta_row(name) is not None
            if self.client.has_collection(collection):
                existed = True
                self.client.drop_collection(collection)
            self.client.delete(self._meta, filter=f"name == {filters.quote(name)}")
            self._forget(name)
        return existed

    # ---- reads ------------------------------------------------------------------------------------------
    def _query(
        self, ds: Dataset, expr: str, fields: Sequence[str], consistency: str = STRONG
    ) -> list[dict[str, Any]]:
        with self._on(ds):
            return list(self.client.query(
                ds.collection, filter=expr, output_fields=list(fields), consistency_level=consistency,
                timeout=self.settings.call_timeout_seconds,
            ))

    def _rows_by_id(self, ds: Dataset, ids: Sequence[int], fields: Sequence[str]) -> dict[int, dict[str, Any]]:
        found: dict[int, dict[str, Any]] = {}
        unique = list(dict.fromkeys(int(i) for i in ids))
        for chunk in _chunks(unique, _CHUNK):
            for row in self._query(ds, _id_list(chunk), fields):
                found[int(row["id"])] = row
        return found

    def count(self, name: str, expr: str = "") -> int:
        ds = self.dataset(name)
        return self._count(ds, expr)

    def _count(self, ds: Dataset, expr: str, consistency: str = STRONG) -> int:
        rows = self._query(ds, expr, ["count(*)"], consistency)
        return int(rows[0]["count(*)"]) if rows else 0

    def get(self, name: str, ids: Sequence[int], include_vectors: bool) -> tuple[list[dict[str, Any]], list[int]]:
        ds = self.dataset(name)
        self._check_batch(len(ids), "ids")
        for i, v in enumerate(ids):
            filters.row_id(v, f"ids[{i}]")
        fields = [*SCALAR_FIELDS, "vector"] if include_vectors else list(SCALAR_FIELDS)
        found = self._rows_by_id(ds, ids, fields)
        missing = [int(i) for i in dict.fromkeys(ids) if int(i) not in found]
        return [found[i] for i in dict.fromkeys(int(x) for x in ids) if i in found], missing

    def _check_batch(self, n: int, what: str) -> None:
        if n > self.settings.max_batch_items:
            raise InvalidArgument(f"{what}: {n} items, at most {self.settings.max_batch_items} per call")

    # ---- writes -----------------------------------------------------------------------------------------
    def _write(self, ds: Dataset, rows: list[dict[str, Any]]) -> None:
        with self._on(ds):
            for chunk in _chunks(rows, self.settings.write_batch_rows):
                self.client.upsert(ds.collection, list(chunk), timeout=self.settings.call_timeout_seconds)
        if not self.settings.is_server:
            self._unflushed[ds.collection] = self._unflushed.get(ds.collection, 0) + len(rows)

    def flush_pending(self, name: str, min_rows: int = 1) -> bool:
        """Milvus Lite: flush the dataset's in-memory rows to indexed segments when there are min_rows of them.

        Lite answers searches over unflushed rows by a slow path (seconds at 20k rows); a server seals and
        indexes segments itself, so this does nothing there.
        """
        ds = self.dataset(name)
        pending = self._unflushed.get(ds.collection, 0)
        if self.settings.is_server or pending < max(min_rows, 1):
            return False
        with self._on(ds):
            self.client.flush(ds.collection, timeout=self.settings.call_timeout_seconds)
        self._unflushed[ds.collection] = 0
        return True

    def _check_vector(self, vec: np.ndarray, ds: Dataset, field_name: str) -> np.ndarray:
        if vec.shape[0] != ds.dim:
            raise InvalidArgument(f"{field_name}: dimension {vec.shape[0]}, dataset {ds.name!r} has dim {ds.dim}")
        if not np.any(vec):
            raise InvalidArgument(f"{field_name}: a zero vector has no direction (cosine is undefined)")
        return vec

    def upsert(
        self, name: str, items: Sequence[labelstore_pb2.UpsertItem], *, check_duplicates: bool = False,
        duplicate_threshold: float = 0.0,
    ) -> UpsertResult:
        """Insert or update rows by id; labels of existing rows are kept; an ingest label is HUMAN."""
        ds = self.dataset(name)
        self._check_batch(len(items), "items")
        s = self.settings
        parsed: dict[int, tuple[np.ndarray, str, str, str]] = {}
        ids: list[int] = []
        for i, item in enumerate(items):
            where = f"items[{i}]"
            vec = self._check_vector(vectors.from_proto(item.vector, field=f"{where}.vector"), ds, f"{where}.vector")
            sha = item.content_sha256.lower()
            if sha and not _SHA256.fullmatch(sha):
                raise InvalidArgument(f"{where}.content_sha256: expected 64 hex characters")
            if item.id == 0:
                if not sha:
                    raise InvalidArgument(f"{where}: set id or content_sha256")
                row_id = id_from_sha256(sha)
            else:
                row_id = filters.row_id(item.id, f"{where}.id")
                if sha and row_id != id_from_sha256(sha):
                    raise InvalidArgument(f"{where}: id does not match content_sha256 (first 63 bits)")
            uri = filters.text(item.uri, f"{where}.uri", s.max_uri_length)
            label = filters.text(item.label, f"{where}.label", s.max_label_length)
            parsed[row_id] = (vec, sha, uri, label)  # a repeated id: the last one wins
            ids.append(row_id)
        result = UpsertResult(ids=ids)
        if not parsed:
            return result
        with self._lock(ds.name):
            existing = self._rows_by_id(ds, list(parsed), SCALAR_FIELDS)
            if check_duplicates:
                threshold, _k = self._dup_params(duplicate_threshold, 0)
                result.duplicates = self._ingest_duplicates(ds, parsed, threshold)
            now = now_ms()
            rows = []
            for row_id, (vec, sha, uri, label) in parsed.items():
                prev = existing.get(row_id)
                row = self._new_row(row_id, ds, now) if prev is None else dict(prev)
                row.update(vector=vec, model_id=ds.model_id)
                if sha:
                    row["content_sha256"] = sha
                if uri:
                    row["uri"] = uri
                if label and row["label_source"] != HUMAN:
                    row.update(label=label, label_source=HUMAN, confidence=1.0, round_id="", label_method="ingest",
                               labeled_at_ms=now)
                rows.append(row)
            self._write(ds, rows)
        result.upserted = len(rows)
        result.inserted = sum(1 for i in parsed if i not in existing)
        return result

    @staticmethod
    def _new_row(row_id: int, ds: Dataset, now: int) -> dict[str, Any]:
        return {
            "id": row_id, "content_sha256": "", "uri": "", "label": "", "label_source": NONE, "confidence": 0.0,
            "cluster_id": -1, "round_id": "", "label_method": "", "model_id": ds.model_id, "created_at_ms": now,
            "labeled_at_ms": 0,
        }

    def _ingest_duplicates(
        self, ds: Dataset, parsed: dict[int, tuple[np.ndarray, str, str, str]], threshold: float
    ) -> list[dict[str, Any]]:
        ids = list(parsed)
        queries = np.stack([parsed[i][0] for i in ids])
        k = self.settings.duplicate_neighbors
        out = []
        found = self._search(ds, queries, k + 1, "", self.settings.duplicate_hnsw_ef)
        for row_id, hits in zip(ids, found, strict=True):
            for hit in hits:
                if hit["id"] != row_id and hit["score"] >= threshold:
                    out.append({"id": row_id, "duplicate_of": hit["id"], "similarity": hit["score"],
                                "duplicate_uri": hit["uri"]})
        return out

    def set_labels(self, name: str, assignments: Sequence[labelstore_pb2.LabelAssignment]) -> SetLabelsResult:
        """Apply labels with provenance; a machine label never replaces a human one."""
        ds = self.dataset(name)
        self._check_batch(len(assignments), "assignments")
        s = self.settings
        wanted: dict[int, labelstore_pb2.LabelAssignment] = {}
        for i, a in enumerate(assignments):
            where = f"assignments[{i}]"
            filters.row_id(a.id, f"{where}.id")
            if a.source == common_pb2.LABEL_SOURCE_UNSPECIFIED:
                raise InvalidArgument(f"{where}.source: required")
            filters.source(a.source, f"{where}.source")
            filters.text(a.label, f"{where}.label", s.max_label_length)
            filters.text(a.round_id, f"{where}.round_id", 128)
            filters.text(a.method, f"{where}.method", 128)
            if a.label and a.source == NONE:
                raise InvalidArgument(f"{where}: a label needs a source other than NONE")
            if not (np.isfinite(a.confidence) and 0.0 <= a.confidence <= 1.0):
                raise InvalidArgument(f"{where}.confidence: must be in [0, 1]")
            if a.cluster_id < -1:
                raise InvalidArgument(f"{where}.cluster_id: a cluster id is >= 0 (-1: leave as is)")
            wanted[int(a.id)] = a
        result = SetLabelsResult()
        if not wanted:
            return result
        with self._lock(ds.name):
            existing = self._rows_by_id(ds, list(wanted), [*SCALAR_FIELDS, "vector"])
            now = now_ms()
            rows = []
            for row_id, a in wanted.items():
                prev = existing.get(row_id)
                if prev is None:
                    result.missing_ids.append(row_id)
                    continue
                if prev["label_source"] == HUMAN and a.source != HUMAN:
                    result.skipped_human += 1
                    continue
                if a.label:
                    # float32 like the stored column, so an unchanged confidence compares equal
                    new = (a.label, int(a.source), 1.0 if a.source == HUMAN else float(np.float32(a.confidence)))
                else:
                    new = ("", NONE, 0.0)
                old = (prev["label"], int(prev["label_source"]), float(np.float32(prev["confidence"])))
                label_changed = old != new
                row = dict(prev)
                row.update(label=new[0], label_source=new[1], confidence=new[2], round_id=a.round_id,
                           label_method=a.method)
                if a.cluster_id != -1:
                    row["cluster_id"] = int(a.cluster_id)
                if label_changed:
                    row["labeled_at_ms"] = now
                    result.changed += 1
                    result.changed_ids.append(row_id)
                else:
                    result.unchanged += 1
                if any(row[k] != prev[k] for k in SCALAR_FIELDS):
                    row["vector"] = np.asarray(prev["vector"], dtype=np.float32)
                    rows.append(row)
            if rows:
                self._write(ds, rows)
        return result

    def delete(self, name: str, ids: Sequence[int]) -> int:
        ds = self.dataset(name)
        self._check_batch(len(ids), "ids")
        for i, v in enumerate(ids):
            filters.row_id(v, f"ids[{i}]")
        with self._lock(ds.name):
            present = list(self._rows_by_id(ds, ids, ["id"]))
            with self._on(ds):
                for chunk in _chunks(present, _CHUNK):
                    self.client.delete(ds.collection, ids=list(chunk), timeout=self.settings.call_timeout_seconds)
        return len(present)

    # ---- search -----------------------------------------------------------------------------------------
    def query_matrix(self, name: str, msgs: Sequence[common_pb2.Vector], field_name: str) -> tuple[Dataset, np.ndarray]:
        ds = self.dataset(name)
        if not msgs:
            raise InvalidArgument(f"{field_name}: at least one vector")
        self._check_batch(len(msgs), field_name)
        rows = [
            self._check_vector(vectors.from_proto(m, field=f"{field_name}[{i}]"), ds, f"{field_name}[{i}]")
            for i, m in enumerate(msgs)
        ]
        return ds, np.stack(rows)

    def search(self, name: str, msgs: Sequence[common_pb2.Vector], top_k: int, expr: str) -> list[list[dict[str, Any]]]:
        top_k = top_k or 10
        if not 1 <= top_k <= 1024:
            raise InvalidArgument(f"top_k must be in 1..1024, got {top_k}")
        ds, queries = self.query_matrix(name, msgs, "queries")
        return self._search(ds, queries, top_k, expr)

    def _search(
        self, ds: Dataset, queries: np.ndarray, top_k: int, expr: str, ef: int = 0
    ) -> list[list[dict[str, Any]]]:
        if self.settings.lite_flush_rows:
            self.flush_pending(ds.name, self.settings.lite_flush_rows)
        out: list[list[dict[str, Any]]] = []
        params = search_params(ds.index_type, top_k, self.settings, ef)
        for chunk in _chunks(queries, _CHUNK):
            with self._on(ds):
                res = self.client.search(
                    ds.collection, data=[np.asarray(q, dtype=np.float32) for q in chunk], filter=expr, limit=top_k,
                    output_fields=HIT_FIELDS, search_params=params, consistency_level=SESSION,
                    timeout=self.settings.call_timeout_seconds,
                )
            for hits in res:
                out.append([
                    {"id": int(h["id"]), "score": min(1.0, max(-1.0, float(h["distance"]))),
                     **{f: h["entity"].get(f) for f in HIT_FIELDS}}
                    for h in hits
                ])
        return out

    # ---- scans ------------------------------------------------------------------------------------------
    def scan(
        self, name: str, expr: str = "", page_size: int = 0, after_id: int = 0, include_vectors: bool = True,
    ) -> tuple[int, Iterator[list[dict[str, Any]]]]:
        """(rows matching after after_id now, pages in increasing id order). Memory: one page.

        Milvus Lite returns a limited query in no particular order, so pages are id windows sized by
        counts: a window with more rows than a page is narrowed, an empty one widened. Only the first
        count is Strong (on a server each Strong read waits ~200 ms for the time tick); once it has
        returned, every write acknowledged before the scan began is visible, so the pages read with
        Session consistency.
        """
        ds = self.dataset(name)
        page_size = page_size or self.settings.scan_page_size
        if not 1 <= page_size <= 10000:
            raise InvalidArgument(f"page_size must be in 1..10000, got {page_size}")
        if not 0 <= after_id <= filters.MAX_ID:
            raise InvalidArgument(f"after_id must be in 0..{filters.MAX_ID}")
        total = self._count(ds, filters.and_(f"id > {after_id}", expr))
        fields = [*SCALAR_FIELDS, "vector"] if include_vectors else list(SCALAR_FIELDS)
        return total, self._pages(ds, expr, page_size, after_id, total, fields)

    def _pages(
        self, ds: Dataset, expr: str, page_size: int, lo: int, total: int, fields: list[str]
    ) -> Iterator[list[dict[str, Any]]]:
        # Content ids are uniform over 63 bits, so the first window assumes that; it adapts otherwise.
        width = max(page_size, (filters.MAX_ID - lo) // max(total, 1) * page_size)
        while lo < filters.MAX_ID:
            hi = min(filters.MAX_ID, lo + width)
            window = filters.and_(f"id > {lo} && id <= {hi}", expr)
            n = self._count(ds, window, SESSION)
            if n > page_size:
                width = max(1, (hi - lo) * page_size // (2 * n))
                continue
            if n == 0:
                if hi >= filters.MAX_ID or self._count(ds, filters.and_(f"id > {hi}", expr), SESSION) == 0:
                    return
                lo, width = hi, width * 8
                continue
            rows = self._query(ds, window, fields, SESSION)
            rows.sort(key=lambda r: int(r["id"]))
            yield rows
            lo = hi
            width = max(1, min(width * 8, width * page_size // max(len(rows), 1)))

    # ---- near-duplicates --------------------------------------------------------------------------------
    def duplicates_of(
        self, name: str, msgs: Sequence[common_pb2.Vector], threshold: float, max_neighbors: int
    ) -> list[list[dict[str, Any]]]:
        """Per query vector: stored rows with cosine >= threshold, most similar first."""
        threshold, k = self._dup_params(threshold, max_neighbors)
        ds, queries = self.query_matrix(name, msgs, "vectors")
        hits = self._search(ds, queries, k, "", self.settings.duplicate_hnsw_ef)
        return [[h for h in per_query if h["score"] >= threshold] for per_query in hits]

    def _dup_params(self, threshold: float, max_neighbors: int) -> tuple[float, int]:
        threshold = threshold or self.settings.duplicate_threshold
        if not (np.isfinite(threshold) and -1.0 <= threshold <= 1.0):
            raise InvalidArgument(f"threshold must be in [-1, 1], got {threshold}")
        k = max_neighbors or self.settings.duplicate_neighbors
        if not 1 <= k <= 1000:
            raise InvalidArgument(f"max_neighbors must be in 1..1000, got {k}")
        return float(threshold), k

    def duplicate_groups(self, name: str, threshold: float, max_neighbors: int) -> list[Group]:
        """All pairs at or above the threshold via the index (each row's top neighbours), as groups."""
        threshold, k = self._dup_params(threshold, max_neighbors)
        ds = self.dataset(name)
        _total, pages = self.scan(name, page_size=_CHUNK, include_vectors=True)
        pairs: dict[tuple[int, int], float] = {}
        info: dict[int, tuple[str, int]] = {}
        for page in pages:
            queries = np.stack([np.asarray(r["vector"], dtype=np.float32) for r in page])
            found = self._search(ds, queries, k + 1, "", self.settings.duplicate_hnsw_ef)
            for row, hits in zip(page, found, strict=True):
                me = int(row["id"])
                for hit in hits:
                    if hit["id"] == me or hit["score"] < threshold:
                        continue
                    key = (min(me, hit["id"]), max(me, hit["id"]))
                    pairs[key] = max(pairs.get(key, -2.0), hit["score"])
                    info[me] = (row["uri"], int(row["created_at_ms"]))
                    info[hit["id"]] = (hit["uri"] or "", int(hit["created_at_ms"] or 0))
        order = {i: (created, i) for i, (_uri, created) in info.items()}
        groups = group_pairs(((a, b, s) for (a, b), s in pairs.items()), order)
        for g in groups:
            g.uris = [info[i][0] for i in g.ids]
        return groups

    def iter_rows(self, name: str, expr: str = "", ids: Sequence[int] = ()) -> Iterator[list[dict[str, Any]]]:
        """Rows without vectors in increasing id order: all matching expr, or only the given ids."""
        if not ids:
            _total, pages = self.scan(name, expr, include_vectors=False)
            yield from pages
            return
        ds = self.dataset(name)
        self._check_batch(len(ids), "ids")
        for i, v in enumerate(ids):
            filters.row_id(v, f"ids[{i}]")
        for chunk in _chunks(sorted(set(int(i) for i in ids)), _CHUNK):
            rows = self._query(ds, filters.and_(_id_list(chunk), expr), SCALAR_FIELDS)
            rows.sort(key=lambda r: int(r["id"]))
            if rows:
                yield rows
