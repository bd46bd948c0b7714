"""TLS contexts from PEM files: a server's certificate and key, a client's one trusted CA.

Only the standard library's ``ssl``; each function raises ``ValueError`` naming the file
and what is wrong with it, so a bad setting is a clear configuration error.
"""

from __future__ import annotations

import ssl


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """Serves ``cert_file`` (the certificate, then any intermediates) with ``key_file``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
    except FileNotFoundError as exc:
        raise ValueError(f"{exc.filename}: no such file") from exc
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(
            f"{cert_file} and {key_file}: not a PEM certificate and its private key ({exc})"
        ) from exc
    return context


def client_context(ca_file: str | None) -> ssl.SSLContext:
    """Verifies the server's certificate and host name: against ``ca_file`` alone, or
    against the system's trust store when None."""
    if ca_file is None:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context
    # This CA alone: a certificate a public CA signed for the same name is not the head.
    # PROTOCOL_TLS_CLIENT checks the certificate and the host name.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_verify_locations(cafile=ca_file)
    except FileNotFoundError as exc:
        raise ValueError(f"{ca_file}: no such file") from exc
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"{ca_file}: not a PEM certificate ({exc})") from exc
    return context
