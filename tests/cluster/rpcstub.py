"""A worker of another llama.cpp, for the version check (tests/appliance/test_cluster.py): the description says
this image's versions, the RPC server answers HELLO with protocol 6.9.0. Runs inside the llmpi image behind the
real spiped channels (tests/cluster/supervisord.worker.conf)."""

from __future__ import annotations

import json
import socketserver
import struct
import threading

from llmpi.cluster import wire, worker
from llmpi.host import llama_build

OTHER_VERSION = (6, 9, 0)


class Hello(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        head = self.request.recv(9)
        if len(head) < 9 or head[0] != wire.RPC_CMD_HELLO:
            return
        (size,) = struct.unpack("<Q", head[1:])
        self.request.recv(size)
        body = bytes([*OTHER_VERSION, 0]) + bytes(wire.RPC_CONN_CAPS)
        self.request.sendall(struct.pack("<Q", len(body)) + body)


class Describe(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        info = {**llama_build.own_versions(), "arch": "stub", "budget": 1 << 30, "budget_source": "stub", "threads": 1}
        self.request.sendall(json.dumps(info).encode())


def main() -> None:
    socketserver.TCPServer.allow_reuse_address = True
    hello = socketserver.ThreadingTCPServer(("127.0.0.1", worker.RPC_LOCAL_PORT), Hello)
    threading.Thread(target=hello.serve_forever, daemon=True).start()
    socketserver.ThreadingTCPServer(("127.0.0.1", worker.INFO_LOCAL_PORT), Describe).serve_forever()


if __name__ == "__main__":
    main()
