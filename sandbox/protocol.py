"""Messages between the pool and a sandbox worker: 4-byte big-endian length + UTF-8 JSON.

Used on both sides of the worker's stdin/stdout pipes (stdlib only: the worker imports it
inside the sandbox). Reads take an optional deadline so the pool never blocks forever on a
worker that hangs.
"""

import json
import os
import select
import struct
import time

MAX_MESSAGE_BYTES = 64 << 20  # a sane bound: outputs are truncated far below this


class ProtocolError(Exception):
    """The other side closed the pipe, sent garbage, or did not answer in time."""


def encode(message: dict) -> bytes:
    # ASCII escapes keep any str (even lone surrogates from odd model output) encodable.
    body = json.dumps(message, separators=(",", ":")).encode("ascii")
    return struct.pack(">I", len(body)) + body


def send(fd: int, message: dict) -> None:
    data = memoryview(encode(message))
    while data:
        written = os.write(fd, data)
        data = data[written:]


def _read_exact(fd: int, size: int, deadline) -> bytes:
    chunks = []
    remaining = size
    while remaining:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                raise ProtocolError("timed out waiting for the other side")
        chunk = os.read(fd, min(remaining, 1 << 20))
        if not chunk:
            raise ProtocolError("pipe closed")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def receive(fd: int, deadline=None) -> dict:
    """Read one message; deadline is a time.monotonic() value or None to wait forever."""
    (size,) = struct.unpack(">I", _read_exact(fd, 4, deadline))
    if size > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {size} bytes is too large")
    try:
        message = json.loads(_read_exact(fd, size, deadline).decode("utf-8"))
    except ValueError as exc:
        raise ProtocolError(f"malformed message: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError("message is not a JSON object")
    return message
