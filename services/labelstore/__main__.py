"""Runs the label store: `python -m services.labelstore`."""

from services.labelstore.servicer import LabelStoreService
from services.labelstore.settings import LabelStoreSettings
from tagalong.runtime.server import serve
from tagalong.runtime.settings import load_settings


def main() -> None:
    settings = load_settings(LabelStoreSettings, program="tagalong-labelstore")
    serve(LabelStoreService(settings), settings)


if __name__ == "__main__":
    main()
