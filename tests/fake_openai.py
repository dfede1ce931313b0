"""A protocol-level stand-in for an OpenAI-compatible server, for error paths only.

It speaks real HTTP/1.1 and server-sent events on a real port, so the client under test
goes through its whole network stack. Each request takes the next scripted behaviour:
``ok``, ``slow_ok`` (answers after a second), ``http500``, ``http400``, ``malformed``,
``stall`` (stops mid-stream), ``slow_first`` (no first token for a long time), ``close``
(drops the connection).
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from dataclasses import dataclass, field


@dataclass
class FakeOpenAI:
    script: deque[str] = field(default_factory=deque)
    reply: str = "Hello from the fake engine."
    requests: list[dict[str, object]] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    port: int = 0

    async def __aenter__(self) -> FakeOpenAI:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.decode().split("\r\n"):
                if line.lower().startswith("content-length:"):
                    length = int(line.split(":")[1])
            body = json.loads(await reader.readexactly(length)) if length else {}
            self.requests.append(body)
            behaviour = self.script.popleft() if self.script else "ok"
            await getattr(self, f"_{behaviour}")(writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _start_stream(self, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"cache-control: no-cache\r\nconnection: close\r\n\r\n"
        )
        await writer.drain()

    def _event(self, writer: asyncio.StreamWriter, payload: object) -> None:
        data = payload if isinstance(payload, str) else json.dumps(payload)
        writer.write(f"data: {data}\n\n".encode())

    def _chunk(self, text: str | None, finish: str | None = None) -> dict[str, object]:
        delta = {"content": text} if text is not None else {}
        return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    async def _ok(self, writer: asyncio.StreamWriter) -> None:
        await self._start_stream(writer)
        for word in self.reply.split(" "):
            self._event(writer, self._chunk(word + " "))
            await writer.drain()
        self._event(writer, self._chunk(None, "stop"))
        self._event(writer, {"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 5}})
        self._event(writer, "[DONE]")
        await writer.drain()

    async def _http500(self, writer: asyncio.StreamWriter) -> None:
        body = b'{"error":{"message":"boom"}}'
        writer.write(
            b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\n"
            + f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()

    async def _http400(self, writer: asyncio.StreamWriter) -> None:
        body = b'{"error":{"message":"context length exceeded"}}'
        writer.write(
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
            + f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()

    async def _slow_ok(self, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(1.0)
        await self._ok(writer)

    async def _malformed(self, writer: asyncio.StreamWriter) -> None:
        await self._start_stream(writer)
        self._event(writer, self._chunk("Hel"))
        self._event(writer, "{not json")
        await writer.drain()

    async def _stall(self, writer: asyncio.StreamWriter) -> None:
        await self._start_stream(writer)
        self._event(writer, self._chunk("Hello"))
        await writer.drain()
        await asyncio.sleep(30)

    async def _slow_first(self, writer: asyncio.StreamWriter) -> None:
        await self._start_stream(writer)
        await asyncio.sleep(30)

    async def _close(self, writer: asyncio.StreamWriter) -> None:
        writer.transport.abort()
