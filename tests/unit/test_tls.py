"""TLS and mutual TLS between services, with certificates made in the test."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tagalong.runtime.channels import make_channel
from tagalong.runtime.server import run_server
from tagalong.runtime.settings import ClientSettings
from tagalong.v1 import embedder_pb2, embedder_pb2_grpc
from tests.unit._echo_service import EchoService, EchoSettings


def _cert(name: str, issuer_key: ec.EllipticCurvePrivateKey | None, issuer: x509.Name | None,
          is_ca: bool) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer or subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if not is_ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
    return key, builder.sign(issuer_key or key, hashes.SHA256())


def _write(path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> tuple[Path, Path]:
    key_file, cert_file = path.with_suffix(".key"), path.with_suffix(".pem")
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_file, cert_file


@pytest.fixture()
def pki(tmp_path: Path) -> dict[str, Path]:
    ca_key, ca_cert = _cert("tagalong-test-ca", None, None, is_ca=True)
    _, ca_file = _write(tmp_path / "ca", ca_key, ca_cert)
    out = {"ca": ca_file}
    for who in ("server", "client"):
        key, cert = _cert("localhost", ca_key, ca_cert.subject, is_ca=False)
        out[f"{who}_key"], out[f"{who}_cert"] = _write(tmp_path / who, key, cert)
    rogue_ca_key, rogue_ca = _cert("rogue-ca", None, None, is_ca=True)
    key, cert = _cert("localhost", rogue_ca_key, rogue_ca.subject, is_ca=False)
    out["rogue_key"], out["rogue_cert"] = _write(tmp_path / "rogue", key, cert)
    return out


async def _call(address: str, settings: ClientSettings) -> grpc.StatusCode:
    channel = make_channel(address, settings)
    try:
        await embedder_pb2_grpc.EmbedderStub(channel).EmbedImages(
            embedder_pb2.EmbedImagesRequest(images=[b"x"]), timeout=5)
        return grpc.StatusCode.OK
    except grpc.aio.AioRpcError as err:
        return err.code()
    finally:
        await channel.close()


async def test_mutual_tls_accepts_our_clients_and_refuses_others(pki: dict[str, Path]) -> None:
    settings = EchoSettings(host="localhost", log_format="text", tls_cert_file=pki["server_cert"],
                            tls_key_file=pki["server_key"], tls_ca_file=pki["ca"])
    async with run_server(EchoService(), settings) as running:
        address = f"localhost:{running.port}"
        ours = ClientSettings(tls_ca_file=pki["ca"], tls_cert_file=pki["client_cert"], tls_key_file=pki["client_key"])
        assert await _call(address, ours) == grpc.StatusCode.OK
        # No client certificate: refused (TLS 1.3 reports it after the handshake, so the code varies).
        no_cert = ClientSettings(tls_ca_file=pki["ca"], retry_attempts=1)
        assert await _call(address, no_cert) != grpc.StatusCode.OK
        # A certificate from another CA: refused too.
        rogue = ClientSettings(tls_ca_file=pki["ca"], tls_cert_file=pki["rogue_cert"],
                               tls_key_file=pki["rogue_key"], retry_attempts=1)
        assert await _call(address, rogue) != grpc.StatusCode.OK
        # Plaintext to a TLS port fails.
        assert await _call(address, ClientSettings(retry_attempts=1)) != grpc.StatusCode.OK


async def test_server_only_tls(pki: dict[str, Path]) -> None:
    settings = EchoSettings(host="localhost", log_format="text", tls_cert_file=pki["server_cert"],
                            tls_key_file=pki["server_key"])
    async with run_server(EchoService(), settings) as running:
        address = f"localhost:{running.port}"
        assert await _call(address, ClientSettings(tls_ca_file=pki["ca"])) == grpc.StatusCode.OK
