"""uvicorn's httptools protocol with the request head capped: 431 past `gateway.max_header_bytes` or
`gateway.max_headers`.

httptools keeps a header's value in memory until the header ends and has no limit of its own, so a client
could send one header of 64 MB. Here a request head is fed to the parser at most up to the cap, and a head
still not complete by then is answered 431 and the connection closed: the gateway never holds more of it.
What the client goes on sending is read and dropped for a moment (a lingering close, as nginx's), so that
the kernel does not reset the connection before the client has read the answer.

It also writes an answer's head and body in one send() (`_OneSend`): uvicorn writes them in two, which wakes
the client twice and costs a second system call, a good part of a warm invocation's CPU in the gateway.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def bounded_protocol(*, max_header_bytes: int, max_headers: int) -> type[HttpToolsProtocol]:
    """The protocol class for `uvicorn.run(http=...)`, with these caps."""
    return type("BoundedHttpToolsProtocol", (_Bounded,), {"MAX_HEAD_BYTES": max_header_bytes,
                                                           "MAX_HEADERS": max_headers})


class _HeadTooLarge(Exception):
    pass


_LINGER_S = 2.0             # after a 431: how long to drop what the client still sends, before closing
_LINGER_BYTES = 8 << 20     # and how much of it at most


class _OneSend:
    """The connection's transport as uvicorn sees it, but a response head (uvicorn writes it alone on
    `http.response.start`) waits for the next write, its body, and goes with it: one send() instead of two.
    A head is never held past the current turn of the event loop (a streamed answer, a `100 Continue`), nor
    past close(); everything else is the transport's own."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._head: bytes | None = None

    def write(self, data: bytes) -> None:
        if self._head is not None:
            data, self._head = self._head + data, None
        elif data[-4:] == b"\r\n\r\n" and data[:5] == b"HTTP/":
            self._head = data
            self._loop.call_soon(self.release)
            return
        self._transport.write(data)

    def release(self) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            self._transport.write(head)

    def close(self) -> None:
        self.release()
        self._transport.close()

    def write_eof(self) -> None:
        self.release()
        self._transport.write_eof()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _Bounded(HttpToolsProtocol):
    MAX_HEAD_BYTES = 64 * 1024
    MAX_HEADERS = 100

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True        # until the parser has seen the whole head of the current request
        self._head_bytes = 0        # bytes fed while in the head
        self._header_count = 0
        self._refusal = ""          # set when a head is refused: send_400_response answers 431 instead
        self._dropped = -1          # after a 431: bytes read and dropped since (-1: not refused)

    def connection_made(self, transport: asyncio.Transport) -> None:     # type: ignore[override]
        super().connection_made(_OneSend(transport, asyncio.get_running_loop()))  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        if self._dropped >= 0:
            self._dropped += len(data)
            if self._dropped > _LINGER_BYTES:
                self.transport.close()
            return
        while data and self._dropped < 0 and not self.transport.is_closing():
            if not self._in_head:
                super().data_received(data)
                return
            room = self.MAX_HEAD_BYTES - self._head_bytes
            if room <= 0:
                self._refuse(f"the request line and headers are larger than {self.MAX_HEAD_BYTES} bytes "
                             "(gateway.max_header_bytes)")
                return
            piece, data = data[:room], data[room:]
            self._head_bytes += len(piece)
            super().data_received(piece)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_count = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.MAX_HEADERS:
            self._refusal = f"the request has more than {self.MAX_HEADERS} header fields (gateway.max_headers)"
            raise _HeadTooLarge()      # the parser stops; uvicorn answers with send_400_response
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head, self._head_bytes = True, 0      # the next request on this connection

    def send_400_response(self, msg: str) -> None:
        if self._refusal:
            self._refuse(self._refusal)
        else:
            super().send_400_response(msg)

    def _refuse(self, message: str) -> None:
        self.logger.warning("request refused: %s", message, extra={"client": self.client and self.client[0],
                                                                     "status": 431})
        body = orjson.dumps({"error": "RequestHeaderFieldsTooLarge", "message": message, "requestId": ""})
        self.transport.write(b"".join([
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
            b"content-type: application/json\r\n",
            b"content-length: ", str(len(body)).encode(), b"\r\n",
            b"connection: close\r\n\r\n", body]))
        self._dropped = 0
        if self.transport.can_write_eof():
            self.transport.write_eof()          # the answer, then end of stream; the client may read it at leisure
            asyncio.get_running_loop().call_later(_LINGER_S, self.transport.close)
        else:
            self.transport.close()
