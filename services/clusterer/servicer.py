"""The Clusterer gRPC servicer: reads datasets from the label store, runs the pure core in a thread, writes back."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from grpc import aio

from services.clusterer import artifacts
from services.clusterer.core import SOURCE_PROPAGATED, RoundOutput, RoundParams, encode_labels, run_round_core
from services.clusterer.projection import project
from services.clusterer.quality import label_error_scores, outlier_scores
from services.clusterer.settings import ClustererSettings
from services.clusterer.store import Dataset, StoreClient
from services.clusterer.threads import limited_threads
from services.clusterer.zeroshot import class_embeddings, zero_shot_probs
from tagalong.runtime.channels import make_channel
from tagalong.runtime.errors import FailedPrecondition, InvalidArgument
from tagalong.runtime.rounds import check_round_config
from tagalong.runtime.settings import SettingError
from tagalong.runtime.vectors import stack
from tagalong.v1 import clusterer_pb2, clusterer_pb2_grpc, common_pb2, labelstore_pb2

log = logging.getLogger(__name__)
T = TypeVar("T")

_PROJECTION_NAMES = {
    common_pb2.PROJECTION_METHOD_UNSPECIFIED: "pca",
    common_pb2.PROJECTION_METHOD_PCA: "pca",
    common_pb2.PROJECTION_METHOD_TSNE: "tsne",
    common_pb2.PROJECTION_METHOD_UMAP: "umap",
}
_TOP_CLASSES = 3


def round_params(config: common_pb2.RoundConfig, settings: ClustererSettings) -> RoundParams:
    """A RoundConfig with its zero fields replaced by the service defaults."""
    check_round_config(config)
    return RoundParams(
        pca_variance=config.pca_variance or settings.pca_variance,
        pca_components=config.pca_components,
        max_pca_components=settings.max_pca_components,
        feature_power=config.feature_power or settings.feature_power,
        k=config.k,
        k_min=config.k_min or settings.k_min,
        k_max=config.k_max or settings.k_max,
        confidence_threshold=config.confidence_threshold or settings.confidence_threshold,
        max_iterations=config.max_iterations or settings.max_iterations,
        review_batch_size=config.review_batch_size or settings.review_batch_size,
        diversity=config.diversity or settings.diversity,
        seed=config.seed,
        label_spreading=not config.disable_label_spreading,
        self_training=not config.disable_self_training,
        recluster=not config.disable_recluster,
        knn_k=settings.knn_k,
        zero_shot_temperature=settings.zero_shot_temperature,
    )


def _top_classes(probs: np.ndarray, names: list[str], n: int = _TOP_CLASSES) -> list[common_pb2.ClassScore]:
    order = np.argsort(probs)[::-1][:n]
    return [common_pb2.ClassScore(label=names[i], score=float(probs[i])) for i in order if probs[i] > 0]


def _progress(stage: str, fraction: float, message: str) -> clusterer_pb2.RunRoundResponse:
    return clusterer_pb2.RunRoundResponse(
        progress=clusterer_pb2.RoundProgress(stage=stage, fraction=float(min(max(fraction, 0.0), 1.0)), message=message)
    )


class ClustererService(clusterer_pb2_grpc.ClustererServicer):
    """Service object for the runtime bootstrap and the servicer itself."""

    name = "clusterer"
    service_names = (clusterer_pb2.DESCRIPTOR.services_by_name["Clusterer"].full_name,)

    def __init__(self, settings: ClustererSettings) -> None:
        self.settings = settings
        self._channel: aio.Channel | None = None
        self._store: StoreClient | None = None
        self._rounds = asyncio.Semaphore(settings.max_concurrent_rounds)

    # -- lifecycle ---------------------------------------------------------------------------------------
    def register(self, server: aio.Server) -> None:
        clusterer_pb2_grpc.add_ClustererServicer_to_server(self, server)

    async def start(self) -> None:
        root = Path(self.settings.artifact_dir)
        try:
            root.mkdir(parents=True, exist_ok=True)
            probe = root / f".write-probe-{uuid.uuid4().hex}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise SettingError("TAGALONG_CLUSTERER_ARTIFACT_DIR", f"cannot write to {root}: {err}") from None
        self._channel = make_channel(self.settings.labelstore_addr)
        try:
            await asyncio.wait_for(self._channel.channel_ready(), timeout=self.settings.labelstore_connect_seconds)
        except TimeoutError:
            await self._channel.close()
            raise SettingError(
                "TAGALONG_CLUSTERER_LABELSTORE_ADDR",
                f"label store at {self.settings.labelstore_addr} not reachable within "
                f"{self.settings.labelstore_connect_seconds:.0f}s",
            ) from None
        self._store = StoreClient(
            self._channel, call_seconds=self.settings.labelstore_call_seconds,
            scan_seconds=self.settings.scan_seconds, page_size=self.settings.scan_page_size,
        )

    async def stop(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    @property
    def store(self) -> StoreClient:
        if self._store is None:
            raise FailedPrecondition("clusterer not started")
        return self._store

    async def _compute(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Heavy numeric work off the event loop, with the configured thread cap."""

        def run() -> T:
            with limited_threads(self.settings.compute_threads):
                return fn(*args, **kwargs)

        return await asyncio.to_thread(run)

    @staticmethod
    def _dataset_name(name: str) -> str:
        if not name:
            raise InvalidArgument("dataset is required")
        return name

    # -- RunRound ----------------------------------------------------------------------------------------
    async def RunRound(
        self, request: clusterer_pb2.RunRoundRequest, context: aio.ServicerContext
    ) -> AsyncIterator[clusterer_pb2.RunRoundResponse]:
        dataset = self._dataset_name(request.dataset)
        round_id = artifacts.check_round_id(
            request.round_id or f"round-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"
        )
        params = round_params(request.config, self.settings)
        params.validate()
        prior = self._prior(request.config.zero_shot_prior)
        started = time.perf_counter()
        events: asyncio.Queue[clusterer_pb2.RunRoundResponse] = asyncio.Queue()
        yield _progress("scan", 0.0, f"reading dataset {dataset!r}")

        def on_page(sent: int, total: int) -> None:
            events.put_nowait(_progress("scan", 0.3 * sent / max(total, 1), f"read {sent} of {total} items"))

        data = await self.store.load(dataset, max_points=self.settings.max_points, on_page=on_page)
        while not events.empty():
            yield events.get_nowait()
        if data.ids.size < 3:
            raise FailedPrecondition(f"dataset {dataset!r} has {data.ids.size} items; a round needs at least 3")
        if prior and data.vectors.shape[1] != next(iter(prior.values())).shape[1]:
            raise InvalidArgument(
                f"config.zero_shot_prior: prompt dimension {next(iter(prior.values())).shape[1]}, "
                f"dataset dimension {data.vectors.shape[1]}"
            )
        human = data.is_human & np.array([bool(lbl) for lbl in data.labels])
        labels = [lbl if h else "" for lbl, h in zip(data.labels, human, strict=True)]
        loop = asyncio.get_running_loop()

        def report(stage: str, fraction: float, message: str) -> None:
            loop.call_soon_threadsafe(events.put_nowait, _progress(stage, 0.3 + 0.6 * fraction, message))

        artifact_root = Path(self.settings.artifact_dir)
        pca_key = {"pca_variance": params.pca_variance, "pca_components": params.pca_components,
                   "max_pca_components": params.max_pca_components, "feature_power": params.feature_power}

        def compute() -> RoundOutput:
            saved = None if request.config.refit_pca else artifacts.load_dataset_pca(
                artifact_root, dataset, rows=int(data.ids.size), dim=int(data.vectors.shape[1]), settings=pca_key
            )
            out = run_round_core(
                data.vectors, labels, human, params, zero_shot_prior=prior or None, progress=report,
                threads=self.settings.compute_threads, pca=saved,
            )
            if not out.pca_reused:
                artifacts.save_dataset_pca(artifact_root, dataset, out.pca, rows=int(data.ids.size), settings=pca_key)
            return out

        async with self._rounds:
            async for event in _drain_while(asyncio.to_thread(compute), events):
                if isinstance(event, RoundOutput):
                    out = event
                else:
                    yield event
        artifact_path = await asyncio.to_thread(self._save, round_id, dataset, out, params)
        written = 0
        if request.config.write_labels:
            yield _progress("write", 0.92, f"writing {out.n_committed_machine} labels")
            written = await self.store.set_labels(
                dataset, self._assignments(data, out, round_id), self.settings.write_batch_size
            )
        summary = self._summary(dataset, round_id, data, out, artifact_path, written, time.perf_counter() - started)
        yield _progress("write", 1.0, f"done: {summary.propagated} labels propagated, coverage {summary.coverage:.1%}")
        yield clusterer_pb2.RunRoundResponse(
            result=clusterer_pb2.RoundResult(summary=summary, review_batch=self._review(data, out))
        )

    def _prior(self, prompts: Any) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for i, cp in enumerate(prompts):
            if not cp.label:
                raise InvalidArgument(f"config.zero_shot_prior[{i}]: label is required")
            if not cp.prompt_embeddings:
                raise InvalidArgument(f"config.zero_shot_prior[{i}]: no prompt embeddings")
            out[cp.label] = stack(cp.prompt_embeddings, field=f"config.zero_shot_prior[{i}].prompt_embeddings")
        if len(out) == 1:
            raise InvalidArgument("config.zero_shot_prior needs at least two classes")
        return out

    def _save(self, round_id: str, dataset: str, out: RoundOutput, params: RoundParams) -> str:
        meta = {
            "round_id": round_id, "dataset": dataset, "k": out.kmeans.k, "method": out.method,
            "pca_components": out.pca.n_components, "explained_variance": out.pca.explained_variance,
            "feature_power": out.feature_power, "params": {k: v for k, v in vars(params).items()},
            "timings": out.timings,
            "silhouette_by_k": {str(k): v for k, v in out.kmeans.silhouette_by_k.items()},
        }
        path = artifacts.save_round(
            Path(self.settings.artifact_dir), round_id, pca=out.pca, centroids=out.kmeans.centroids,
            classifier=out.classifier, class_names=out.class_names, meta=meta,
        )
        return str(path.resolve())

    @staticmethod
    def _assignments(data: Dataset, out: RoundOutput, round_id: str) -> list[labelstore_pb2.LabelAssignment]:
        """What the round changes in the store, and nothing else.

        A round recomputes every machine label from the human ones, so: committed rows get their label; a row
        that carried a machine label from an earlier round (or a zero-shot pass) and is no longer committed is
        cleared (a stale label would otherwise look current); and every machine row whose cluster moved gets
        the new cluster id. Human rows are never touched (their label, annotator and cluster stay as they are).
        """
        committed = out.source == SOURCE_PROPAGATED
        had_label = np.fromiter((bool(lbl) for lbl in data.labels), dtype=bool, count=len(data.labels))
        machine = ~data.is_human
        stale = machine & had_label & ~committed
        moved = machine & (data.cluster_ids != out.cluster)
        out_rows = []
        for i in np.flatnonzero(committed | stale | moved):
            if committed[i]:
                label, confidence = out.class_names[out.label[i]], float(out.confidence[i])
            else:
                label, confidence = "", 0.0
            out_rows.append(labelstore_pb2.LabelAssignment(
                id=int(data.ids[i]), label=label, source=common_pb2.LABEL_SOURCE_PROPAGATED, confidence=confidence,
                cluster_id=int(out.cluster[i]), round_id=round_id, method=out.method,
            ))
        return out_rows

    @staticmethod
    def _summary(
        dataset: str, round_id: str, data: Dataset, out: RoundOutput, artifact_path: str, written: int, seconds: float
    ) -> common_pb2.RoundSummary:
        n = int(data.ids.size)
        human = int((out.source == 1).sum())
        propagated = out.n_committed_machine
        return common_pb2.RoundSummary(
            round_id=round_id, dataset=dataset, total=n, human_labeled=human, propagated=propagated,
            uncommitted=n - human - propagated, coverage=(human + propagated) / max(n, 1), k=out.kmeans.k,
            pca_components=out.pca.n_components, explained_variance=out.pca.explained_variance,
            iterations=[
                common_pb2.IterationMetrics(
                    iteration=s.iteration, method=s.method, labeled=s.labeled, changed=s.changed,
                    mean_confidence=s.mean_confidence, agreement=s.agreement, clusters=s.clusters,
                    clusters_split=s.clusters_split,
                )
                for s in out.iterations
            ],
            clusters=[
                common_pb2.ClusterStats(
                    cluster_id=c.cluster_id, size=c.size, majority_label=c.majority_label, purity=c.purity,
                    human_labeled=c.human_labeled,
                )
                for c in out.clusters
            ],
            class_counts=out.class_counts(), duration_seconds=seconds, artifact_uri=artifact_path,
            labels_written=written, pca_reused=out.pca_reused, feature_power=out.feature_power,
        )

    @staticmethod
    def _review(data: Dataset, out: RoundOutput) -> list[common_pb2.ReviewItem]:
        items = []
        for pick in out.review:
            i = pick.index
            guess = int(out.predicted[i])
            items.append(
                common_pb2.ReviewItem(
                    id=int(data.ids[i]), uri=data.uris[i], priority=pick.priority, reason=pick.reason,
                    predicted_label=out.class_names[guess] if guess >= 0 else "",
                    confidence=float(out.confidence[i]) if guess >= 0 else 0.0,
                    top_classes=_top_classes(out.probs[i], out.class_names) if out.class_names else [],
                    cluster_id=int(out.cluster[i]),
                )
            )
        return items

    # -- Project -----------------------------------------------------------------------------------------
    async def Project(
        self, request: clusterer_pb2.ProjectRequest, context: aio.ServicerContext
    ) -> clusterer_pb2.ProjectResponse:
        dataset = self._dataset_name(request.dataset)
        dims = request.dims or 2
        if dims not in (2, 3):
            raise InvalidArgument(f"dims must be 2 or 3, got {dims}")
        method = _PROJECTION_NAMES.get(request.method)
        if method is None:
            raise InvalidArgument(f"unknown projection method {request.method}")
        if method == "umap":
            project(np.zeros((4, 4), dtype=np.float32), "umap", dims)  # FAILED_PRECONDITION when not installed
        limit = min(request.max_points or self.settings.projection_max_points, self.settings.projection_max_points)
        rng = np.random.default_rng(request.seed)
        state: dict[str, Any] = {}

        def keep(offset: int, count: int) -> np.ndarray:
            # Uniform sample of `limit` rows chosen from the scan's total, decided page by page (bounded memory).
            if "chosen" not in state:
                total = state.get("total", 0)
                chosen = np.zeros(max(total, 1), dtype=bool)
                chosen[rng.choice(total, min(limit, total), replace=False) if total else []] = True
                state["chosen"] = chosen
            chosen = state["chosen"]
            mask = np.zeros(count, dtype=bool)
            inside = max(0, min(count, chosen.size - offset))
            mask[:inside] = chosen[offset : offset + inside]
            return mask

        data = await self._load_sampled(dataset, keep, state)
        total = int(state.get("total", data.ids.size))
        if data.ids.size == 0:
            return clusterer_pb2.ProjectResponse(total=total)
        proj = await self._compute(project, data.vectors, method, dims, request.seed)
        points = [
            common_pb2.ProjectedPoint(
                id=int(data.ids[i]), coords=proj.coords[i].tolist(), label=data.labels[i],
                label_source=int(data.sources[i]), uri=data.uris[i],
            )
            for i in range(data.ids.size)
        ]
        return clusterer_pb2.ProjectResponse(points=points, explained_variance=proj.explained_variance, total=total)

    async def _load_sampled(
        self, dataset: str, keep: Callable[[int, int], np.ndarray], state: dict[str, Any]
    ) -> Dataset:
        state["total"] = await self.store.count(dataset)
        return await self.store.load(dataset, max_points=self.settings.max_points, keep=keep)

    # -- ZeroShot ----------------------------------------------------------------------------------------
    async def ZeroShot(
        self, request: clusterer_pb2.ZeroShotRequest, context: aio.ServicerContext
    ) -> clusterer_pb2.ZeroShotResponse:
        dataset = self._dataset_name(request.dataset)
        if len(request.classes) < 2:
            raise InvalidArgument("classes: at least two classes are required")
        names = [c.label for c in request.classes]
        if any(not n for n in names) or len(set(names)) != len(names):
            raise InvalidArgument("classes: every class needs a distinct, non-empty label")
        prompts = [
            stack(c.prompt_embeddings, field=f"classes[{i}].prompt_embeddings") for i, c in enumerate(request.classes)
        ]
        temperature = request.temperature or self.settings.zero_shot_temperature
        if temperature < 0:
            raise InvalidArgument(f"temperature must be >= 0, got {request.temperature}")
        min_conf = request.min_confidence or self.settings.zero_shot_min_confidence
        if request.ids:
            data = await self.store.get(dataset, list(request.ids))
        else:
            data = await self.store.load(dataset, max_points=self.settings.max_points)
        if data.ids.size == 0:
            return clusterer_pb2.ZeroShotResponse()

        def compute() -> np.ndarray:
            vecs = class_embeddings(prompts, data.vectors.shape[1])
            return zero_shot_probs(data.vectors, vecs, temperature)

        probs = await self._compute(compute)
        best = probs.argmax(axis=1)
        conf = probs[np.arange(best.size), best]
        order = np.argsort(-conf, kind="stable")
        if request.limit:
            order = order[: request.limit]
        predictions = [
            common_pb2.ZeroShotPrediction(
                id=int(data.ids[i]), label=names[best[i]], confidence=float(conf[i]),
                top_classes=_top_classes(probs[i], names), uri=data.uris[i],
            )
            for i in order
        ]
        written = 0
        if request.write_labels:
            rows = np.flatnonzero(conf >= min_conf)
            assignments = [
                labelstore_pb2.LabelAssignment(
                    id=int(data.ids[i]), label=names[best[i]], source=common_pb2.LABEL_SOURCE_ZERO_SHOT,
                    confidence=float(conf[i]), cluster_id=-1, method="zero_shot",
                )
                for i in rows
            ]
            written = await self.store.set_labels(dataset, assignments, self.settings.write_batch_size)
        return clusterer_pb2.ZeroShotResponse(predictions=predictions, labels_written=written)

    # -- LabelErrors -------------------------------------------------------------------------------------
    async def LabelErrors(
        self, request: clusterer_pb2.LabelErrorsRequest, context: aio.ServicerContext
    ) -> clusterer_pb2.LabelErrorsResponse:
        dataset = self._dataset_name(request.dataset)
        k = request.k or 10
        min_score = request.min_score or 0.5
        limit = request.limit or 100
        data = await self.store.load(dataset, max_points=self.settings.max_points)
        y, names = encode_labels(data.labels)
        human = data.is_human & (y >= 0)
        if not human.any():
            return clusterer_pb2.LabelErrorsResponse(examined=0)
        scores = await self._compute(label_error_scores, data.vectors, y, human, len(names), k=k)
        order = np.argsort(-scores.score, kind="stable")
        candidates = []
        for j in order:
            if scores.score[j] < min_score or len(candidates) >= limit:
                break
            i = int(scores.index[j])
            candidates.append(
                common_pb2.LabelErrorCandidate(
                    id=int(data.ids[i]), uri=data.uris[i], given_label=names[y[i]],
                    suggested_label=names[scores.suggested[j]] if scores.suggested[j] >= 0 else "",
                    score=float(scores.score[j]),
                )
            )
        return clusterer_pb2.LabelErrorsResponse(candidates=candidates, examined=int(scores.index.size))

    # -- Outliers ----------------------------------------------------------------------------------------
    async def Outliers(
        self, request: clusterer_pb2.OutliersRequest, context: aio.ServicerContext
    ) -> clusterer_pb2.OutliersResponse:
        dataset = self._dataset_name(request.dataset)
        limit = request.limit or 100
        # k=30 and the global median won the measurement on planted odd photos (bench/eval_outliers.py):
        # relative to their own cluster, a group of odd items looks typical (P@N 0.16 vs 0.80).
        k = request.k or 30
        data = await self.store.load(dataset, max_points=self.settings.max_points)
        n = int(data.ids.size)
        if n < 2:
            return clusterer_pb2.OutliersResponse(examined=n)
        scores = await self._compute(outlier_scores, data.vectors, k=k)
        order = np.argsort(-scores, kind="stable")[:limit]
        return clusterer_pb2.OutliersResponse(
            outliers=[
                common_pb2.OutlierScore(
                    id=int(data.ids[i]), uri=data.uris[i], score=float(scores[i]), label=data.labels[i]
                )
                for i in order
            ],
            examined=n,
        )


async def _drain_while(work: Any, events: asyncio.Queue[Any]) -> AsyncIterator[Any]:
    """Yield queued events while `work` runs, then the remaining events, then work's result."""
    task = asyncio.ensure_future(work)
    try:
        while not task.done():
            getter = asyncio.ensure_future(events.get())
            done, _ = await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                yield getter.result()
            else:
                getter.cancel()
        await asyncio.sleep(0)  # let call_soon_threadsafe callbacks scheduled by the thread run
        while not events.empty():
            yield events.get_nowait()
        yield task.result()
    finally:
        if not task.done():
            task.cancel()
