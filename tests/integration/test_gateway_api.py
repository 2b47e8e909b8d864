"""The gateway's own checks on a real Redis, before any service is called: allowed roots, the bounded
queue (RESOURCE_EXHAUSTED), stream validation, label validation, jobs and WatchJob."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis
from grpc import aio

from gateway.jobs import JobStore, Outcome
from gateway.keys import Keys
from gateway.registry import DatasetMeta, Registry
from tagalong.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from tests.fixtures.gateway import clean_redis, gateway_settings, running_gateway

# Nothing listens there: these tests must be answered by the gateway itself.
NOWHERE = "127.0.0.1:9"


@pytest.fixture()
def image_root(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    (root / "cats").mkdir(parents=True)
    for i in range(3):
        (root / "cats" / f"{i}.jpg").write_bytes(f"jpeg-{i}".encode())
    (tmp_path / "secret.jpg").write_bytes(b"secret")
    os.symlink(tmp_path / "secret.jpg", root / "link.jpg")
    return root


@pytest.fixture()
async def api(redis_url: str, redis_prefix: str, image_root: Path) -> AsyncIterator[gateway_pb2_grpc.GatewayStub]:
    settings = gateway_settings(
        redis_url, redis_prefix, allowed_roots=str(image_root), max_queue_length=5,
        embedder_addr=NOWHERE, labelstore_addr=NOWHERE, clusterer_addr=NOWHERE, call_deadline_seconds=2.0,
    )
    client = aioredis.Redis.from_url(redis_url)
    # The dataset record CreateDataset would write (it needs the embedder and label store).
    await Registry(client, Keys(redis_prefix)).put_dataset(DatasetMeta("pets", "m", 4, ["cat", "dog"]))
    await client.aclose()
    async with running_gateway(settings) as running, aio.insecure_channel(running.address) as channel:
        yield gateway_pb2_grpc.GatewayStub(channel)
    clean_redis(redis_url, redis_prefix)


def _header(dataset: str = "pets") -> gateway_pb2.IngestRequest:
    return gateway_pb2.IngestRequest(header=gateway_pb2.IngestHeader(dataset=dataset))


def _content(data: bytes, label: str = "") -> gateway_pb2.IngestRequest:
    return gateway_pb2.IngestRequest(item=gateway_pb2.IngestItem(content=data, name="x.jpg", label=label))


def _path(path: str) -> gateway_pb2.IngestRequest:
    return gateway_pb2.IngestRequest(item=gateway_pb2.IngestItem(path=path))


async def _ingest_code(stub: gateway_pb2_grpc.GatewayStub, requests: list[gateway_pb2.IngestRequest]) -> tuple[
    grpc.StatusCode, str
]:
    try:
        await stub.Ingest(iter(requests), timeout=10)
    except aio.AioRpcError as err:
        return err.code(), err.details() or ""
    return grpc.StatusCode.OK, ""


@pytest.mark.parametrize(
    ("make", "code", "match"),
    [
        pytest.param(lambda r: [_header(), _path("/etc/passwd")], grpc.StatusCode.PERMISSION_DENIED, "outside",
                     id="outside-root"),
        pytest.param(lambda r: [_header(), _path(f"{r}/../secret.jpg")], grpc.StatusCode.PERMISSION_DENIED,
                     "outside", id="dot-dot"),
        pytest.param(lambda r: [_header(), _path(f"{r}/link.jpg")], grpc.StatusCode.PERMISSION_DENIED, "outside",
                     id="symlink-escaping"),
        pytest.param(lambda r: [_header(), _path(f"{r}/missing.jpg")], grpc.StatusCode.NOT_FOUND, "does not exist",
                     id="missing-file"),
        pytest.param(lambda r: [_header(), _path(f"{r}/{'a' * 300}.jpg")], grpc.StatusCode.INVALID_ARGUMENT,
                     "too long", id="name-over-255-bytes"),
        pytest.param(lambda r: [_content(b"x")], grpc.StatusCode.INVALID_ARGUMENT, "header", id="no-header"),
        pytest.param(lambda r: [], grpc.StatusCode.INVALID_ARGUMENT, "empty", id="empty-stream"),
        pytest.param(lambda r: [_header("nope"), _content(b"x")], grpc.StatusCode.NOT_FOUND, "no dataset",
                     id="unknown-dataset"),
        pytest.param(lambda r: [_header(), _content(b"x", label="bird")], grpc.StatusCode.INVALID_ARGUMENT,
                     "not a class", id="undeclared-label"),
        pytest.param(lambda r: [_header(), _content(b"")], grpc.StatusCode.INVALID_ARGUMENT, "empty content",
                     id="empty-image"),
        pytest.param(lambda r: [_header(), _header()], grpc.StatusCode.INVALID_ARGUMENT, "once", id="two-headers"),
        pytest.param(lambda r: [_header()] + [_content(bytes([i])) for i in range(10)],
                     grpc.StatusCode.RESOURCE_EXHAUSTED, "full", id="queue-full"),
    ],
)
async def test_ingest_refusals(api: gateway_pb2_grpc.GatewayStub, image_root: Path, make: object,
                               code: grpc.StatusCode, match: str) -> None:
    got, details = await _ingest_code(api, make(image_root))  # type: ignore[operator]
    assert got == code, details
    assert match in details


async def test_full_queue_fails_the_job(api: gateway_pb2_grpc.GatewayStub, redis_url: str,
                                                          redis_prefix: str) -> None:
    code, _ = await _ingest_code(api, [_header()] + [_content(bytes([i])) for i in range(4)])
    assert code == grpc.StatusCode.OK  # 4 of 5 places taken
    code, details = await _ingest_code(api, [_header(), _content(b"a"), _content(b"b")])
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "retry later" in details
    client = aioredis.Redis.from_url(redis_url)
    keys = Keys(redis_prefix)
    assert await client.xlen(keys.stream("ingest")) == 5  # "a" got the last place, "b" was refused
    states = [await client.hget(k, "state") async for k in client.scan_iter(match=keys.job("*"))]
    await client.aclose()
    assert sorted(s for s in states if s) == [b"FAILED", b"QUEUED"]


async def test_path_ingest_walks_a_directory_under_the_root(api: gateway_pb2_grpc.GatewayStub, image_root: Path,
                                                            redis_url: str, redis_prefix: str) -> None:
    reply = await api.Ingest(iter([_header(), _path(str(image_root / "cats"))]), timeout=10)
    assert reply.queued == 3
    job = (await api.GetJob(gateway_pb2.GetJobRequest(job_id=reply.job_id))).job
    assert (job.kind, job.total, job.state) == ("ingest", 3, gateway_pb2.JOB_STATE_QUEUED)
    client = aioredis.Redis.from_url(redis_url)
    rows = await client.xrange(Keys(redis_prefix).stream("ingest"))
    await client.aclose()
    assert sorted(Path(f[b"path"].decode()).name for _, f in rows) == ["0.jpg", "1.jpg", "2.jpg"]


async def test_watch_job_streams_until_the_end(api: gateway_pb2_grpc.GatewayStub, redis_url: str,
                                               redis_prefix: str) -> None:
    reply = await api.Ingest(iter([_header(), _content(b"a"), _content(b"b")]), timeout=10)
    client = aioredis.Redis.from_url(redis_url)
    jobs = JobStore(client, Keys(redis_prefix), ttl_seconds=60)

    async def progress() -> None:  # stands in for a worker
        for i in range(2):
            await asyncio.sleep(0.3)
            await jobs.record(reply.job_id, [Outcome(str(i), True, f"x{i}")])

    driver = asyncio.create_task(progress())
    seen = [r.job async for r in api.WatchJob(gateway_pb2.WatchJobRequest(job_id=reply.job_id, interval_seconds=0.1),
                                               timeout=20)]
    await driver
    await client.aclose()
    assert seen[-1].state == gateway_pb2.JOB_STATE_SUCCEEDED and seen[-1].done == 2
    assert [j.done for j in seen] == sorted(j.done for j in seen)  # progress only moves forward
    assert any(j.state == gateway_pb2.JOB_STATE_QUEUED for j in seen)


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        pytest.param([gateway_pb2.HumanLabel(id=1, label="bird")], "not a class", id="undeclared-class"),
        pytest.param([gateway_pb2.HumanLabel(id=1, label="")], "empty label", id="empty-label"),
        pytest.param([gateway_pb2.HumanLabel(content_sha256="zz", label="cat")], "64 hex", id="bad-sha"),
        pytest.param([gateway_pb2.HumanLabel(label="cat")], "set id", id="no-target"),
    ],
)
async def test_submit_labels_validation(api: gateway_pb2_grpc.GatewayStub, labels: list[gateway_pb2.HumanLabel],
                                        match: str) -> None:
    with pytest.raises(aio.AioRpcError) as info:
        await api.SubmitLabels(gateway_pb2.SubmitLabelsRequest(dataset="pets", labels=labels), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert match in (info.value.details() or "")


@pytest.mark.parametrize(
    ("call", "code"),
    [
        pytest.param(lambda s: s.GetJob(gateway_pb2.GetJobRequest(job_id="nope")), grpc.StatusCode.NOT_FOUND,
                     id="unknown-job"),
        pytest.param(lambda s: s.GetReviewQueue(gateway_pb2.GetReviewQueueRequest(dataset="pets")),
                     grpc.StatusCode.NOT_FOUND, id="no-round-yet"),
        pytest.param(lambda s: s.SearchByText(gateway_pb2.SearchByTextRequest(dataset="bad name", text="x")),
                     grpc.StatusCode.INVALID_ARGUMENT, id="bad-dataset-name"),
        pytest.param(lambda s: s.Project(gateway_pb2.GatewayProjectRequest(dataset="pets", dims=5)),
                     grpc.StatusCode.INVALID_ARGUMENT, id="bad-dims"),
        pytest.param(lambda s: s.ZeroShot(gateway_pb2.GatewayZeroShotRequest(dataset="pets", class_names=["cat"])),
                     grpc.StatusCode.INVALID_ARGUMENT, id="one-class"),
        pytest.param(lambda s: s.StartLabelingRound(gateway_pb2.StartLabelingRoundRequest(
                         dataset="pets", config=common_pb2.RoundConfig(feature_power=3.0))),
                     grpc.StatusCode.INVALID_ARGUMENT, id="bad-round-config"),
        pytest.param(lambda s: s.SearchByText(gateway_pb2.SearchByTextRequest(dataset="pets", text="a cat")),
                     grpc.StatusCode.UNAVAILABLE, id="embedder-down-is-unavailable"),
    ],
)
async def test_call_errors(api: gateway_pb2_grpc.GatewayStub, call: object, code: grpc.StatusCode) -> None:
    with pytest.raises(aio.AioRpcError) as info:
        await call(api)  # type: ignore[operator]
    assert info.value.code() == code, info.value.details()
