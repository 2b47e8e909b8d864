"""Entry point: `python -m services.clusterer` serves the Clusterer until SIGTERM."""

from services.clusterer.servicer import ClustererService
from services.clusterer.settings import ClustererSettings
from tagalong.runtime.server import serve
from tagalong.runtime.settings import load_settings


def main() -> None:
    settings = load_settings(ClustererSettings, program="tagalong-clusterer")
    serve(ClustererService(settings), settings)


if __name__ == "__main__":
    main()
