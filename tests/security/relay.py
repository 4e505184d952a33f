"""A man in the middle for attack tests: a real gRPC server on loopback that forwards every
``attestfl.v1.Federation`` call to the real aggregator as raw bytes, keeps what passes, and lets
a test rewrite any request or response. It holds no key of either party: what it can do is
what a hostile network can do."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field

import grpc

SERVICE = "attestfl.v1.Federation"
UNARY = ("GetEvidence", "GetChallenge", "Admit", "GetTask", "ReportMetrics")
SERVER_STREAM = ("DownloadModel",)
CLIENT_STREAM = ("UploadUpdate",)

Rewrite = Callable[[str, bytes], bytes]


def _identity(data: bytes) -> bytes:
    return data


@dataclass
class Seen:
    method: str
    metadata: tuple[tuple[str, str], ...]
    requests: list[bytes]
    responses: list[bytes] = field(default_factory=list)


class Relay:
    """Forward calls to ``target``; ``rewrite_request``/``rewrite_response`` see (method, bytes)."""

    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(
            target, options=[("grpc.max_receive_message_length", 8 << 20), ("grpc.max_send_message_length", 8 << 20)]
        )
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        self.rewrite_request: Rewrite = lambda method, data: data
        self.rewrite_response: Rewrite = lambda method, data: data
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=8),
            options=[("grpc.max_receive_message_length", 8 << 20), ("grpc.max_send_message_length", 8 << 20)],
        )
        self.server.add_generic_rpc_handlers((self._handlers(),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def calls(self, method: str) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if s.method == method]

    def _record(self, method: str, context: grpc.ServicerContext, requests: list[bytes]) -> Seen:
        metadata = tuple(
            (k, v) for k, v in context.invocation_metadata() if isinstance(v, str) and not k.startswith("grpc-")
        )
        seen = Seen(method, metadata, requests)
        with self.lock:
            self.seen.append(seen)
        return seen

    def _abort_like(self, context: grpc.ServicerContext, error: grpc.RpcError) -> None:
        context.abort(error.code(), error.details() or "")

    def _unary(self, method: str) -> grpc.RpcMethodHandler:
        call = self.channel.unary_unary(
            f"/{SERVICE}/{method}", request_serializer=_identity, response_deserializer=_identity
        )

        def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
            seen = self._record(method, context, [request])
            try:
                response = call(self.rewrite_request(method, request), metadata=seen.metadata, timeout=60)
            except grpc.RpcError as error:
                self._abort_like(context, error)
            seen.responses.append(response)
            return self.rewrite_response(method, response)

        return grpc.unary_unary_rpc_method_handler(
            handle, request_deserializer=_identity, response_serializer=_identity
        )

    def _server_stream(self, method: str) -> grpc.RpcMethodHandler:
        call = self.channel.unary_stream(
            f"/{SERVICE}/{method}", request_serializer=_identity, response_deserializer=_identity
        )

        def handle(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
            seen = self._record(method, context, [request])
            try:
                for response in call(self.rewrite_request(method, request), metadata=seen.metadata, timeout=60):
                    seen.responses.append(response)
                    yield self.rewrite_response(method, response)
            except grpc.RpcError as error:
                self._abort_like(context, error)

        return grpc.unary_stream_rpc_method_handler(
            handle, request_deserializer=_identity, response_serializer=_identity
        )

    def _client_stream(self, method: str) -> grpc.RpcMethodHandler:
        call = self.channel.stream_unary(
            f"/{SERVICE}/{method}", request_serializer=_identity, response_deserializer=_identity
        )

        def handle(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
            seen = self._record(method, context, [])

            def forward() -> Iterator[bytes]:
                for request in requests:
                    seen.requests.append(request)
                    yield self.rewrite_request(method, request)

            try:
                response = call(forward(), metadata=seen.metadata, timeout=60)
            except grpc.RpcError as error:
                self._abort_like(context, error)
            seen.responses.append(response)
            return self.rewrite_response(method, response)

        return grpc.stream_unary_rpc_method_handler(
            handle, request_deserializer=_identity, response_serializer=_identity
        )

    def _handlers(self) -> grpc.GenericRpcHandler:
        handlers = {name: self._unary(name) for name in UNARY}
        handlers.update({name: self._server_stream(name) for name in SERVER_STREAM})
        handlers.update({name: self._client_stream(name) for name in CLIENT_STREAM})
        return grpc.method_handlers_generic_handler(SERVICE, handlers)

    def replay(self, method: str, requests: list[bytes], metadata: tuple[tuple[str, str], ...]) -> bytes:
        """Send captured request bytes to the aggregator again (a replay by the network)."""
        if method in CLIENT_STREAM:
            call = self.channel.stream_unary(
                f"/{SERVICE}/{method}", request_serializer=_identity, response_deserializer=_identity
            )
            return call(iter(requests), metadata=metadata, timeout=60)
        call = self.channel.unary_unary(
            f"/{SERVICE}/{method}", request_serializer=_identity, response_deserializer=_identity
        )
        return call(requests[0], metadata=metadata, timeout=60)

    def close(self) -> None:
        self.server.stop(0)
        self.channel.close()
