"""Requests written by hand on a socket, to be cut wherever a test likes."""

import socket
import struct

from tests.robustness.conftest import MiB, Served

BOUNDARY = b"b0undary"


def connect(gw: Served) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gw.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def reset(sock: socket.socket) -> None:
    """Vanish as a crashed client does: RST, not FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def put_head(key: str, length: int) -> bytes:
    return f"PUT /objects/{key} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode()


def form_head(length: int = 50 * MiB) -> bytes:
    return (
        b"POST /objects HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
        b"Content-Type: multipart/form-data; boundary=%s\r\n\r\n" % (length, BOUNDARY)
    )


def file_part(name: str, data: bytes = b"") -> bytes:
    return (
        b'--%s\r\nContent-Disposition: form-data; name="file"; filename="%s"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n" % (BOUNDARY, name.encode())
    ) + data


def uploading(gw: Served) -> float:
    return gw.metric("gateway_uploads_in_progress")


def staged(gw: Served) -> float:
    return gw.metric("gateway_backend_duration_seconds_count", operation="stage")
