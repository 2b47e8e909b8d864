"""A tiny Embedder-shaped service used only to test the shared runtime (not the real embedder).

Behaviour is chosen by the first image's bytes: b"sleep:<s>", b"bad", b"boom", b"unavailable".
Run as a script it serves on the port given in argv[1] until SIGTERM (used by the SIGTERM test).
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter

from pydantic_settings import SettingsConfigDict

from tagalong.runtime.errors import InvalidArgument, Unavailable
from tagalong.runtime.server import serve
from tagalong.runtime.settings import ServiceSettings
from tagalong.v1 import embedder_pb2, embedder_pb2_grpc


class EchoSettings(ServiceSettings):
    model_config = SettingsConfigDict(**{**ServiceSettings.model_config, "env_prefix": "TAGALONG_ECHO_"})


class EchoService(embedder_pb2_grpc.EmbedderServicer):
    name = "echo"
    service_names = (embedder_pb2.DESCRIPTOR.services_by_name["Embedder"].full_name,)

    def __init__(self, ready: asyncio.Event | None = None) -> None:
        self.ready = ready
        self.calls: Counter[str] = Counter()
        self.stopped = False

    def register(self, server) -> None:  # type: ignore[no-untyped-def]
        embedder_pb2_grpc.add_EmbedderServicer_to_server(self, server)

    async def start(self) -> None:
        if self.ready is not None:
            await self.ready.wait()

    async def stop(self) -> None:
        self.stopped = True

    async def EmbedImages(self, request, context):  # type: ignore[no-untyped-def]
        first = request.images[0] if request.images else b""
        self.calls[first.decode(errors="replace")] += 1
        if first.startswith(b"sleep:"):
            await asyncio.sleep(float(first.split(b":")[1]))
        elif first == b"bad":
            raise InvalidArgument("images[0]: not an image")
        elif first.startswith(b"quote:"):  # an error message that quotes the (possibly huge) input
            raise InvalidArgument(f"images[0] {first.decode(errors='replace')!r} is not an image")
        elif first == b"boom":
            raise RuntimeError("a bug")
        elif first == b"unavailable" and self.calls["unavailable"] < 3:
            raise Unavailable("warming up")
        from tagalong.runtime.logs import request_id_var

        return embedder_pb2.EmbedImagesResponse(model_id=request_id_var.get(), dim=len(request.images))


if __name__ == "__main__":
    settings = EchoSettings(port=int(sys.argv[1]), grace_seconds=float(sys.argv[2]), log_format="text")
    serve(EchoService(), settings)
