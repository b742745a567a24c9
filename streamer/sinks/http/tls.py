"""TLS towards one REST destination: its own CAs (instead of the system's) and a client
certificate for mutual TLS.

`problem` reads the PEM texts without any I/O (the settings rules use it, so a bad bundle or
a key that is not the certificate's is refused when the command is); `context` builds the
`ssl.SSLContext` the sink keeps per destination: building one costs milliseconds (and
aiohttp pools connections per context object), so it is never built per request.
"""

from __future__ import annotations

import os
import ssl
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import serialization


def problem(ca_bundle: str | None, client_cert: str | None, client_key: str | None) -> str | None:
    """None when the PEM texts are usable, else why not (never quoting the key)."""
    try:
        if ca_bundle is not None:
            x509.load_pem_x509_certificates(ca_bundle.encode())
    except ValueError:
        return "tls ca_bundle is not one or more PEM certificates"
    if client_cert is None or client_key is None:
        return None
    try:
        cert = x509.load_pem_x509_certificates(client_cert.encode())[0]
    except ValueError:
        return "tls client_cert is not a PEM certificate"
    try:
        key = serialization.load_pem_private_key(client_key.encode(), password=None)
    except (ValueError, TypeError):
        return "tls client_key is not an unencrypted PEM private key"
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(*raw) != key.public_key().public_bytes(*raw):
        return "tls client_key is not the key of client_cert (the first certificate)"
    return None


def context(ca_bundle: str | None, client_cert: str | None, client_key: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=ca_bundle) if ca_bundle else ssl.create_default_context()
    if client_cert and client_key:
        _load_chain(ctx, f"{client_cert.strip()}\n{client_key.strip()}\n".encode())
    return ctx


def _load_chain(ctx: ssl.SSLContext, pem: bytes) -> None:
    """The ssl module reads a certificate chain only from a file: an anonymous in-memory file
    where Linux has them, so the decrypted key never touches a disk; else a private
    temporary file, removed at once."""
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fd = os.memfd_create("streamer-client-cert", os.MFD_CLOEXEC)
        try:
            view = memoryview(pem)
            while view:
                view = view[os.write(fd, view):]
            ctx.load_cert_chain(f"/proc/self/fd/{fd}")
            return
        finally:
            os.close(fd)
    with tempfile.TemporaryDirectory(prefix="streamer-tls-") as tmp:  # mode 0700
        path = os.path.join(tmp, "chain.pem")
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
            f.write(pem)
        ctx.load_cert_chain(path)
