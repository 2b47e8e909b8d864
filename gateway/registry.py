"""Dataset metadata (declared classes, embedding model) and review queues, kept in Redis."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field

from redis.asyncio import Redis

from gateway.keys import Keys
from tagalong.runtime.errors import InvalidArgument, NotFound
from tagalong.v1 import common_pb2, gateway_pb2

DATASET_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")


def check_dataset_name(name: str) -> str:
    if not DATASET_NAME.match(name or ""):
        raise InvalidArgument(f"dataset name {name!r} must match [A-Za-z][A-Za-z0-9_]{{0,63}}")
    return name


def check_classes(classes: list[str]) -> list[str]:
    """Declared classes: non-empty, no surrounding spaces, no repeats (order kept)."""
    seen: list[str] = []
    for c in classes:
        if not c or c != c.strip():
            raise InvalidArgument(f"class {c!r} is empty or has surrounding spaces")
        if c in seen:
            raise InvalidArgument(f"class {c!r} is declared twice")
        seen.append(c)
    return seen


@dataclass
class DatasetMeta:
    """What the gateway remembers about a dataset."""

    name: str
    model_id: str
    dim: int
    classes: list[str] = field(default_factory=list)

    def check_label(self, label: str, where: str = "label") -> None:
        """INVALID_ARGUMENT for an empty label, or one outside the declared classes."""
        if not label or label != label.strip():
            raise InvalidArgument(f"{where}: empty label or surrounding spaces")
        if self.classes and label not in self.classes:
            raise InvalidArgument(
                f"{where}: {label!r} is not a class of dataset {self.name!r} (classes: {', '.join(self.classes)})"
            )

    def message(self, count: int = 0) -> gateway_pb2.Dataset:
        return gateway_pb2.Dataset(name=self.name, model_id=self.model_id, dim=self.dim, count=count,
                                   classes=self.classes)


class Registry:
    """Datasets and review queues."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._r = redis
        self._keys = keys

    async def put_dataset(self, meta: DatasetMeta) -> bool:
        """Stores the dataset unless it exists; True when this call stored it."""
        return bool(await self._r.hsetnx(self._keys.datasets, meta.name, json.dumps(asdict(meta))))

    async def find_dataset(self, name: str) -> DatasetMeta | None:
        raw = await self._r.hget(self._keys.datasets, name)
        return DatasetMeta(**json.loads(raw)) if raw else None

    async def dataset(self, name: str) -> DatasetMeta:
        check_dataset_name(name)
        meta = await self.find_dataset(name)
        if meta is None:
            raise NotFound(f"no dataset {name!r} (create it with CreateDataset)")
        return meta

    async def datasets(self) -> list[DatasetMeta]:
        rows = await self._r.hgetall(self._keys.datasets)
        return sorted((DatasetMeta(**json.loads(v)) for v in rows.values()), key=lambda m: m.name)

    async def save_review(self, dataset: str, round_id: str, items: list[common_pb2.ReviewItem]) -> None:
        queue = gateway_pb2.GetReviewQueueResponse(round_id=round_id, items=items)
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.set(self._keys.review(dataset, round_id), queue.SerializeToString())
            pipe.set(self._keys.latest_round(dataset), round_id)
            await pipe.execute()

    async def review(self, dataset: str, round_id: str = "") -> gateway_pb2.GetReviewQueueResponse:
        if not round_id:
            latest = await self._r.get(self._keys.latest_round(dataset))
            if latest is None:
                raise NotFound(f"dataset {dataset!r} has no finished labelling round yet")
            round_id = latest.decode()
        raw = await self._r.get(self._keys.review(dataset, round_id))
        if raw is None:
            raise NotFound(f"no review queue for round {round_id!r} of dataset {dataset!r}")
        return gateway_pb2.GetReviewQueueResponse.FromString(raw)
