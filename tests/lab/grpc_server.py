"""A gRPC server (HTTP/2 without TLS, as in-cluster gRPC often runs) with one method,
`/ktrace.lab.Echo/Say`, answering the request's bytes back. It reads the web pods' fault file
before every call: with a "status" fault for its pod it fails the call UNAVAILABLE, with
"delay_ms" it answers late.

    python -m tests.lab.grpc_server NAME PORT FAULTS_FILE
It prints "ready" once listening.
"""

from __future__ import annotations

import sys
import time
from concurrent import futures
from pathlib import Path

import grpc

from tests.lab.web import _faults

SERVICE, METHOD = "ktrace.lab.Echo", "Say"


def main() -> None:
    name, port, faults = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])

    def say(request: bytes, context: grpc.ServicerContext) -> bytes:
        fault = _faults(faults, name)
        time.sleep(fault.get("delay_ms", 0) / 1000)
        if "status" in fault:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"{name} is shedding load")
        return request

    handler = grpc.method_handlers_generic_handler(
        SERVICE, {METHOD: grpc.unary_unary_rpc_method_handler(say)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=(handler,))
    server.add_insecure_port(f"0.0.0.0:{port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
