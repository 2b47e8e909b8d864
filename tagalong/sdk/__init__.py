"""Python SDK of the tagalong Gateway: `Client` (blocking) and `AsyncClient` (asyncio).

    from tagalong.sdk import Client

    with Client("127.0.0.1:50050", token=None) as c:
        c.create_dataset("pets", classes=["cat", "dog"])
        job = c.wait(c.ingest_dir("pets", "photos/", labels_from_dirs=True).job_id)
        round_job = c.wait(c.start_round("pets", k=10, seed=0).job_id)
        queue = c.review_queue("pets")                      # items with .id, .uri, .reason, ...
        c.submit_labels("pets", {queue.items[0].id: "cat"}, annotator="me")
        hits = c.search_text("pets", "a sleeping cat", top_k=5)
        c.export("pets", "coco", out="pets.json")

Failed calls raise TagalongError (.code, .details); wait() raises JobFailedError for a FAILED job.
Use AsyncClient (same methods, awaitable) inside an event loop: do not mix the blocking client with
gRPC asyncio servers or clients in one process.
"""

from tagalong.sdk._requests import DEFAULT_ADDRESS, JobFailedError, TagalongError, is_terminal
from tagalong.sdk.aio import AsyncClient
from tagalong.sdk.client import Client

__all__ = ["DEFAULT_ADDRESS", "AsyncClient", "Client", "JobFailedError", "TagalongError", "is_terminal"]
