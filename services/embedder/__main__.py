"""`python -m services.embedder`: run the embedder service until SIGTERM."""

from __future__ import annotations

from services.embedder.servicer import EmbedderService
from services.embedder.settings import EmbedderSettings
from tagalong.runtime.server import serve
from tagalong.runtime.settings import load_settings


def main() -> None:
    settings = load_settings(EmbedderSettings, program="tagalong-embedder")
    serve(EmbedderService(settings), settings)


if __name__ == "__main__":
    main()
