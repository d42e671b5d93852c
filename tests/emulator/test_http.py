"""HTTP/1.1 details: pipelined keep-alive requests, chunked uploads, 100-continue."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import requests
from qcloud_cos.cos_auth import CosS3Auth

from .conftest import Emulator
from .helpers import BUCKET, REGION, unique


def read_responses(sock: socket.socket, count: int) -> list[bytes]:
    data = b""
    out: list[bytes] = []
    while len(out) < count:
        chunk = sock.recv(65536)
        assert chunk, "connection closed early"
        data += chunk
        while b"\r\n\r\n" in data:
            head, rest = data.split(b"\r\n\r\n", 1)
            length = int(
                next(
                    line.split(b":", 1)[1]
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
            )
            if len(rest) < length:
                break
            out.append(head + b"\r\n\r\n" + rest[:length])
            data = rest[length:]
    return out


def test_pipelined_keep_alive(emulator: Emulator) -> None:
    with socket.create_connection(("127.0.0.1", emulator.port), timeout=5) as sock:
        req = b"GET /-/healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        sock.sendall(req * 3 + b"GET /-/nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        responses = read_responses(sock, 4)
        assert [r.split(b" ", 2)[1] for r in responses] == [b"200", b"200", b"200", b"404"]
        assert b"Connection: keep-alive" in responses[0]
        assert b"Connection: close" in responses[3]
        assert sock.recv(10) == b""  # closed after the Connection: close request


def test_garbage_request_line_gets_400(emulator: Emulator) -> None:
    with socket.create_connection(("127.0.0.1", emulator.port), timeout=5) as sock:
        sock.sendall(b"HELLO\r\n\r\n")
        status_line = sock.recv(100).split(b"\r\n", 1)[0]
        # No version to answer in: aiohttp answers as HTTP/1.0, as RFC 9112 §2.3 allows.
        assert status_line.split(b" ")[:2] in ([b"HTTP/1.1", b"400"], [b"HTTP/1.0", b"400"])


def test_chunked_upload_with_expect_continue(emulator: Emulator) -> None:
    client = emulator.client()
    key = f"chunked/{unique()}.bin"
    parts = [b"a" * 1000, b"b" * 70000, b"c"]

    def body() -> Iterator[bytes]:
        yield from parts

    prepared = requests.Request(
        "PUT",
        f"{emulator.endpoint}/{key}",
        data=body(),
        headers={"Host": f"{BUCKET}.cos.{REGION}.myqcloud.com", "Expect": "100-continue"},
    ).prepare()
    assert prepared.headers["Transfer-Encoding"] == "chunked"
    CosS3Auth(client._conf, key)(prepared)
    with requests.Session() as s:
        r = s.send(prepared, timeout=10)
    assert r.status_code == 200, r.text
    got = client.get_object(Bucket=BUCKET, Key=key)["Body"].get_raw_stream().read()
    assert got == b"".join(parts)


def test_admin_route_table_and_signed_dash_paths(emulator: Emulator) -> None:
    """Unsigned ``/-/`` calls are the admin API (405/404 as JSON off its table); a signed one is
    an ordinary object call, so a key ``-/faults`` is stored and read back."""
    r = requests.delete(f"{emulator.endpoint}/-/faults", timeout=5)
    assert (r.status_code, r.json()) == (405, {"error": "use GET or PUT"})
    r = requests.get(f"{emulator.endpoint}/-/nowhere", timeout=5)
    assert (r.status_code, r.json()) == (404, {"error": "unknown admin path"})
    client = emulator.client()
    client.put_object(Bucket=BUCKET, Key="-/faults", Body=b"an object, not the admin API")
    got = client.get_object(Bucket=BUCKET, Key="-/faults")["Body"].get_raw_stream().read()
    assert got == b"an object, not the admin API"
    assert "faults" in requests.get(f"{emulator.endpoint}/-/faults", timeout=5).json()
