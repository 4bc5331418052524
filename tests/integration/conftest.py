"""Integration fixtures: the Graph emulator, and an app wired to it and to Azurite with fresh names."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import ssl
from collections.abc import AsyncIterator

import pytest

from shared.platform.settings import get_settings, reset_settings
from shared.reset.runtime import close_runtime, reset_runtime
from tests.factories import isolated_env
from tests.integration.support import App
from tools.azurite import AzuriteEndpoints
from tools.graph_emulator.runner import EmulatorHandle


@pytest.fixture
async def app(
    azurite: AzuriteEndpoints, emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[App]:
    """A fresh app: unique queues and table, a reset emulator, fast retry delays."""
    env = isolated_env(azurite.connection_string, emulator.base_url)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    logging.getLogger("azure").setLevel(logging.WARNING)
    emulator.control.reset()
    reset_settings()
    reset_runtime()
    yield App(get_settings(), emulator.control, azurite.connection_string)
    await close_runtime()
    reset_runtime()
    reset_settings()


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A throwaway CA-less self-signed certificate for 127.0.0.1: (server context, client trust)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_path, key_path)
    return server, ssl.create_default_context(cafile=str(cert_path))
