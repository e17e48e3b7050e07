"""A throwaway certificate authority for the TLS tests, and a TLS terminator in asyncio.

``make_pki(dir)`` writes a CA, a server certificate for 127.0.0.1/localhost signed by it,
a client certificate (mutual TLS) and a second, unrelated CA (the "wrong CA" case).
``TlsTerminator`` accepts TLS on a port and forwards the plaintext to a TCP server, the
way a load balancer or ``socat OPENSSL-LISTEN`` would in front of a broker that cannot
serve TLS itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _ca(common: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(common)).issuer_name(_name(common))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


def _leaf(common: str, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
          server: bool) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    now = datetime.now(UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(common)).issuer_name(ca.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - timedelta(minutes=5))
               .not_valid_after(now + timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   ca_key.public_key()), critical=False)
               .add_extension(x509.ExtendedKeyUsage(
                   [ExtendedKeyUsageOID.SERVER_AUTH if server
                    else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def _write(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    return path


def make_pki(directory: Path) -> Pki:
    """A CA, a server and a client certificate signed by it, and an unrelated CA."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = _ca("dispatcher test CA")
    server, server_key = _leaf("localhost", ca, ca_key, server=True)
    client, client_key = _leaf("dispatcher", ca, ca_key, server=False)
    other, _ = _ca("some other CA")
    return Pki(ca=_write(directory / "ca.pem", ca),
               server_cert=_write(directory / "server.pem", server),
               server_key=_write_key(directory / "server.key", server_key),
               client_cert=_write(directory / "client.pem", client),
               client_key=_write_key(directory / "client.key", client_key),
               other_ca=_write(directory / "other-ca.pem", other))


class TlsTerminator:
    """TLS in on ``port``, plaintext out to ``target_port`` (both on 127.0.0.1).

    With ``client_ca`` set, a client certificate signed by it is required (mutual TLS).
    ``handshakes_failed`` counts refused handshakes; ``connections`` the accepted ones.
    """

    def __init__(self, pki: Pki, target_port: int, client_ca: Path | None = None) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(pki.server_cert, pki.server_key)
        if client_ca is not None:
            self.context.verify_mode = ssl.CERT_REQUIRED
            self.context.load_verify_locations(client_ca)
        self.target_port = target_port
        self.port = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, port: int = 0) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", port,
                                                  ssl=self.context, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            self._tasks.discard(task)
            return
        try:
            await _splice(reader, writer, up_reader, up_writer)
        finally:
            self._tasks.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, ssl.SSLError, OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()


async def _splice(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter) -> None:
    """Relay both ways until either side ends, then close both (TLS has no half-close)."""
    pipes = [asyncio.ensure_future(_pipe(reader, up_writer)),
             asyncio.ensure_future(_pipe(up_reader, writer))]
    try:
        await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pipe in pipes:
            pipe.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)
        for w in (writer, up_writer):
            w.close()


SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104


class PgTlsTerminator(TlsTerminator):
    """The PostgreSQL protocol's TLS in front of a server built without it.

    A PostgreSQL client asks for TLS in plaintext (an 8-byte SSLRequest) and starts the
    handshake only after the server answers ``S``. This terminator answers it, completes the
    handshake as the server (with the test CA's certificate), then relays the session in
    plaintext to ``target_port``. ``tls_sessions`` counts the sessions that went through TLS.
    """

    def __init__(self, pki: Pki, target_port: int) -> None:
        super().__init__(pki, target_port)
        self.tls_sessions = 0

    async def start(self, port: int = 0) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", port,
                                                  reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if await self._negotiate(reader, writer):
                await self._relay(reader, writer)
        except (ConnectionError, ssl.SSLError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _negotiate(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> bool:
        """Answer GSSENCRequest with N and SSLRequest with S, then do the TLS handshake."""
        while True:
            head = await reader.readexactly(8)
            length, code = int.from_bytes(head[:4], "big"), int.from_bytes(head[4:], "big")
            if length == 8 and code == GSSENC_REQUEST:
                writer.write(b"N")
                continue
            if length == 8 and code == SSL_REQUEST:
                writer.write(b"S")
                await writer.drain()
                await writer.start_tls(self.context)
                self.tls_sessions += 1
                return True
            return False  # a plaintext startup: refused, this port is TLS only

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        await _splice(reader, writer, up_reader, up_writer)
