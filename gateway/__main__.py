"""`python -m gateway`: serve the public Gateway API until SIGTERM."""

from gateway.servicer import GatewayService
from gateway.settings import GatewaySettings
from tagalong.runtime.server import serve
from tagalong.runtime.settings import load_settings


def main() -> None:
    settings = load_settings(GatewaySettings, program="tagalong-gateway")
    serve(GatewayService(settings), settings)


if __name__ == "__main__":
    main()
