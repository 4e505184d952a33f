"""Hostile peers for the fault tests: a TCP forwarder that reaches the aggregator from another
loopback address (127.0.0.2, 127.0.0.3, ...: on Linux the whole 127/8 is this machine), so an
attacker and an honest site are different client addresses as they would be on a network; and
calls that send their headers but never their request message."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import grpc

from forwarder import Forwarder


class SourceForwarder(Forwarder):
    """Listen on 127.0.0.1:<port>, connect every accepted connection to the aggregator from
    ``source`` and pump bytes both ways."""

    def __init__(self, target_port: int, source: str) -> None:
        super().__init__(target_port, source)


class BodilessCalls:
    """``count`` calls of ``method`` over ``connections`` connections to ``target`` that send
    headers and then nothing: the request message never comes. Runs on its own event loop
    thread; ``outcomes()`` gives each call's final status code name."""

    def __init__(self, target: str, method: str, count: int, connections: int = 1) -> None:
        self.target, self.method, self.count, self.connections = target, method, count, connections
        self.loop = asyncio.new_event_loop()
        self.started = threading.Event()
        self.codes: list[str] = []
        self._release: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.started.wait(30)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._release = asyncio.Event()
        channels = [grpc.aio.insecure_channel(self.target) for _ in range(self.connections)]
        release = self._release

        async def never() -> Any:
            await release.wait()
            if False:  # pragma: no cover - an async generator that yields nothing
                yield b""

        async def one(channel: grpc.aio.Channel) -> None:
            call = channel.stream_unary(
                f"/attestfl.v1.Federation/{self.method}",
                request_serializer=lambda b: b,
                response_deserializer=lambda b: b,
            )(never(), timeout=120)
            try:
                await call
                self.codes.append("OK")
            except grpc.aio.AioRpcError as error:
                self.codes.append(error.code().name)

        tasks = [asyncio.ensure_future(one(channels[i % self.connections])) for i in range(self.count)]
        await asyncio.sleep(0.5)
        self.started.set()
        await asyncio.gather(*tasks)
        release.set()  # let gRPC's request-iterator tasks finish before the loop goes
        await asyncio.sleep(0.2)
        for channel in channels:
            await channel.close()

    def finish(self, release: bool = False) -> list[str]:
        """Wait for every call to end (``release``: half-close them first, still with no message)."""
        if release and self._release is not None:
            self.loop.call_soon_threadsafe(self._release.set)
        self.thread.join(60)
        return self.codes
