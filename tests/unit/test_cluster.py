"""The cluster (issue 13) without Docker: LLMPI_WORKERS and the cluster secret, the head's spiped channels, the
layer split by memory, llama-server's cluster options, the probes of a worker (reachability, description, RPC HELLO,
versions) against real local sockets standing in for the tunnels, the launcher's wait for workers, and the worker's
own helpers."""

from __future__ import annotations

import configparser
import contextlib
import io
import json
import random
import re
import socket
import stat
import struct
import threading
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import llmpi
from llmpi.cluster import channels, waiting, wire, worker
from llmpi.core import paths, settings, units
from llmpi.core.env import ConfigError
from llmpi.core.settings import Settings
from llmpi.host import hardware, llama_build
from llmpi.plan import fit, serving
from llmpi.plan import split as layers
from llmpi.process import healthcheck
from tests.ggufmaker import llama_like

pytestmark = pytest.mark.unit

HW = hardware.Hardware(cpus=8, physical_cores=4, memory=hardware.Memory(8 * units.GiB, "test RAM"))
SECRET = "0123456789abcdefghijklmnopqrstuvwxyzABCDEF"  # 42 characters, one word
# a Mistral-7B-like model at Q4: 32 layers, 4096 wide, 8 KV heads of 128, 32k trained context
SHAPE_7B = fit.ModelShape(
    architecture="llama",
    weights_bytes=int(4.1 * units.GiB),
    n_layer=32,
    n_embd=4096,
    n_vocab=32000,
    k_width=1024,
    v_width=1024,
    n_ctx_train=32768,
    n_params=7_000_000_000,
)
HELLO_REQUEST = bytes([14]) + struct.pack("<Q", 24) + bytes(24)


def hello_reply(major: int, minor: int, patch: int) -> bytes:
    return struct.pack("<Q", 28) + bytes([major, minor, patch, 0]) + bytes(24)


# --- LLMPI_WORKERS ----------------------------------------------------------------------------------------------


def test_workers_default_port_explicit_ports_and_blanks() -> None:
    assert settings.parse_workers("") == ()
    assert settings.parse_workers(" , ,") == ()
    assert settings.parse_workers("pi-b, 192.168.1.20:6000 ,,pi-c:50060") == (
        settings.Worker("pi-b", 50052),
        settings.Worker("192.168.1.20", 6000),
        settings.Worker("pi-c", 50060),
    )
    assert settings.parse_workers("pi-b")[0].name == "pi-b:50052"
    assert settings.parse_workers("[fd00::1]") == (settings.Worker("fd00::1", 50052),)
    assert settings.parse_workers("fd00::1") == (settings.Worker("fd00::1", 50052),)  # unbracketed: the default port
    # the same host on two ports is two workers (two containers on one board)
    assert len(settings.parse_workers("pi-b:50052,pi-b:50062")) == 2


def test_workers_ipv6_in_brackets_with_a_port() -> None:
    assert settings.parse_workers("[fd00::1]:6000") == (settings.Worker("fd00::1", 6000),)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("pi-b,pi-b:50052", "LLMPI_WORKERS names pi-b:50052 twice"),
        ("pi-b:6000, pi-b:6000", "LLMPI_WORKERS names pi-b:6000 twice"),
        ("pi-b:http", r"LLMPI_WORKERS: 'pi-b:http' is not host\[:port\]"),
        ("pi-b:", r"LLMPI_WORKERS: 'pi-b:' is not host\[:port\]"),
        ("pi-b:0", r"LLMPI_WORKERS: 'pi-b:0' is not host\[:port\] \(port 1-65534\)"),
        ("pi-b:65535", r"LLMPI_WORKERS: 'pi-b:65535' .*port 1-65534"),  # PORT + 1 is the description's
        (":6000", r"LLMPI_WORKERS: ':6000' is not host\[:port\]"),
    ],
)
def test_bad_workers_are_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings.parse_workers(text)


def test_settings_read_workers() -> None:
    assert Settings.read({}).workers == ()
    assert Settings.read({"LLMPI_WORKERS": "a, b:6000"}).workers == (
        settings.Worker("a", 50052),
        settings.Worker("b", 6000),
    )
    with pytest.raises(ConfigError, match="LLMPI_WORKERS names a:50052 twice"):
        Settings.read({"LLMPI_WORKERS": "a,a"})


# --- the cluster secret -----------------------------------------------------------------------------------------


def test_check_secret() -> None:
    assert settings.check_secret(f"  {SECRET}\n", "LLMPI_CLUSTER_SECRET") == SECRET
    with pytest.raises(ConfigError, match=r"LLMPI_CLUSTER_SECRET is 5 characters long; .* at least 32"):
        settings.check_secret("short", "LLMPI_CLUSTER_SECRET")
    with pytest.raises(ConfigError, match="is 31 characters long"):
        settings.check_secret(" " + SECRET[:31] + " ", "LLMPI_CLUSTER_SECRET")  # the blanks around do not count
    assert settings.check_secret(SECRET[:32], "x") == SECRET[:32]
    with pytest.raises(ConfigError, match="LLMPI_CLUSTER_SECRET contains blanks"):
        settings.check_secret(SECRET[:20] + " " + SECRET[20:], "LLMPI_CLUSTER_SECRET")
    with pytest.raises(ConfigError, match="contains blanks"):
        settings.check_secret(SECRET[:20] + "\t" + SECRET[20:], "LLMPI_CLUSTER_SECRET")


def test_settings_read_the_secret_or_its_file(tmp_path: Path) -> None:
    assert Settings.read({}).cluster_secret is None
    assert Settings.read({"LLMPI_CLUSTER_SECRET": f" {SECRET} "}).cluster_secret == SECRET
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    assert Settings.read({"LLMPI_CLUSTER_SECRET_FILE": str(secret_file)}).cluster_secret == SECRET
    with pytest.raises(ConfigError, match="both LLMPI_CLUSTER_SECRET and LLMPI_CLUSTER_SECRET_FILE are set"):
        Settings.read({"LLMPI_CLUSTER_SECRET": SECRET, "LLMPI_CLUSTER_SECRET_FILE": str(secret_file)})
    secret_file.write_text("too short\n")
    with pytest.raises(ConfigError, match="LLMPI_CLUSTER_SECRET_FILE is 9 characters long"):
        Settings.read({"LLMPI_CLUSTER_SECRET_FILE": str(secret_file)})
    with pytest.raises(ConfigError, match=r"LLMPI_CLUSTER_SECRET_FILE=.*cannot read it"):
        Settings.read({"LLMPI_CLUSTER_SECRET_FILE": str(tmp_path / "missing")})


def test_the_generated_secret_is_made_once_0600(tmp_path: Path) -> None:
    path = tmp_path / channels.KEY_FILE_NAME
    secret, new = channels.load_or_create_secret(path)
    assert new and len(secret) >= settings.MIN_SECRET and settings.check_secret(secret, "x") == secret
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == secret
    assert channels.load_or_create_secret(path) == (secret, False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [channels.KEY_FILE_NAME]  # no partial file left
    assert channels.load_or_create_secret(tmp_path / "other.key")[0] != secret  # random, not fixed
    path.write_text("hand-edited\n")
    with pytest.raises(ConfigError, match=f"{re.escape(str(path))} is 11 characters long"):
        channels.load_or_create_secret(path)


def test_spipeds_key_file_is_the_secret_alone(tmp_path: Path) -> None:
    key = tmp_path / "cluster.key"
    key.write_text("an older key\n")
    key.chmod(0o644)
    channels.write_key_file(key, SECRET)
    assert key.read_bytes() == SECRET.encode()  # no newline: spiped hashes the whole file
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cluster.key"]


# --- the head's channels ----------------------------------------------------------------------------------------


def test_head_programs_one_channel_per_worker_port() -> None:
    workers = (settings.Worker("192.168.1.20", 50052), settings.Worker("pi-c", 6000))
    key = Path("/tmp/llmpi/cluster.key")
    ini = configparser.ConfigParser(interpolation=None)
    ini.read_string(channels.head_programs(workers, key))
    assert ini.sections() == [
        "program:channel-rpc-0",
        "program:channel-info-0",
        "program:channel-rpc-1",
        "program:channel-info-1",
    ]
    commands = {name: ini[name]["command"] for name in ini.sections()}
    assert commands == {
        "program:channel-rpc-0": f"spiped -F -D -e -s [127.0.0.1]:51000 -t [192.168.1.20]:50052 -k {key}",
        "program:channel-info-0": f"spiped -F -D -e -s [127.0.0.1]:51001 -t [192.168.1.20]:50053 -k {key}",
        "program:channel-rpc-1": f"spiped -F -D -e -s [127.0.0.1]:51002 -t pi-c:6000 -k {key}",
        "program:channel-info-1": f"spiped -F -D -e -s [127.0.0.1]:51003 -t pi-c:6001 -k {key}",
    }
    for name in ini.sections():
        assert ini[name]["autostart"] == "true" and ini[name]["autorestart"] == "true"
    assert (layers.rpc_tunnel(1), layers.info_tunnel(1)) == (51002, 51003)
    ipv6 = channels.head_programs((settings.Worker("fd00::1", 50052),), key)
    assert "-t [fd00::1]:50052 " in ipv6 and "-t [fd00::1]:50053 " in ipv6
    assert channels.head_programs((), key) == ""


# --- the layer split ----------------------------------------------------------------------------------------------


def needs(split: layers.Split) -> list[int]:
    """What each board's share takes, as board_table counts it."""
    return [
        n * split.per_layer + (split.head_fixed if i == 0 else layers.WORKER_OVERHEAD)
        for i, n in enumerate(split.layers)
    ]


def pooled_estimate(boards: list[layers.Board]) -> fit.Estimate:
    pooled = boards[0].budget + sum(b.budget - layers.WORKER_OVERHEAD for b in boards[1:])
    return fit.choose_slots(SHAPE_7B, pooled, None, None)


BOARDS_3_4_4 = [
    layers.Board("head", 3 * units.GiB, "3 GiB"),
    layers.Board("w1", 4 * units.GiB, "4 GiB"),
    layers.Board("w2", 4 * units.GiB, "4 GiB"),
]


def test_split_layers_fits_every_board() -> None:
    est = pooled_estimate(BOARDS_3_4_4)
    split = layers.split_layers(SHAPE_7B, est, BOARDS_3_4_4)
    assert (split.per_layer, split.head_fixed) == layers.layer_bytes(SHAPE_7B, est)
    assert split.head_fixed + split.per_layer * SHAPE_7B.n_layer == est.total
    assert len(split.layers) == 3 and sum(split.layers) == SHAPE_7B.n_layer
    assert split.worker_layers == split.layers[1] + split.layers[2]
    for need, board in zip(needs(split), BOARDS_3_4_4, strict=True):
        assert need <= board.budget, split.table()
    # shares roughly in proportion to each board's room for layers
    room = [BOARDS_3_4_4[0].budget - split.head_fixed] + [b.budget - layers.WORKER_OVERHEAD for b in BOARDS_3_4_4[1:]]
    for n, r in zip(split.layers, room, strict=True):
        assert abs(n - SHAPE_7B.n_layer * r / sum(room)) < 2, split.layers
    assert split.layers[0] < split.layers[1] and split.layers[0] < split.layers[2]  # the head has less room
    table = split.table().splitlines()
    assert len(table) == 3
    for line, board, n in zip(table, BOARDS_3_4_4, split.layers, strict=True):
        assert line.startswith(f"  {board.name}: {n} layers, needs ") and line.endswith(f" ({board.source})")


def test_split_layers_all_on_one_board_when_it_can() -> None:
    """A head with room for everything still shares by room; a worker with no room gets nothing."""
    boards = [layers.Board("head", 64 * units.GiB, ""), layers.Board("w1", layers.WORKER_OVERHEAD, "")]
    est = pooled_estimate(boards)
    split = layers.split_layers(SHAPE_7B, est, boards)
    assert split.layers == (SHAPE_7B.n_layer, 0) and split.worker_layers == 0


def test_split_layers_rounds_each_share_to_a_neighbour() -> None:
    est = pooled_estimate(BOARDS_3_4_4)
    split = layers.split_layers(SHAPE_7B, est, BOARDS_3_4_4)
    room = [BOARDS_3_4_4[0].budget - split.head_fixed] + [b.budget - layers.WORKER_OVERHEAD for b in BOARDS_3_4_4[1:]]
    capacity = [r // split.per_layer for r in room]
    for n, c in zip(split.layers, capacity, strict=True):
        exact = SHAPE_7B.n_layer * c / sum(capacity)
        assert int(exact) <= n <= int(exact) + 1, (split.layers, exact)
    assert split.layers[1] == split.layers[2]  # identical workers, identical shares


def test_split_layers_too_little_memory_names_every_board() -> None:
    boards = [
        layers.Board("head", units.GiB, "1 GiB"),
        layers.Board("w1", units.GiB, ""),
        layers.Board("w2", units.GiB, ""),
    ]
    est = fit.choose_slots(SHAPE_7B, 64 * units.GiB, None, None)
    with pytest.raises(fit.FitError) as e:
        layers.split_layers(SHAPE_7B, est, boards)
    message = str(e.value)
    assert message.startswith("the model does not fit across 3 boards: 32 layers of about ")
    lines = [line for line in message.splitlines() if re.match(r"  \S+: \d+ layers, needs .* of ", line)]
    assert [line.split(":")[0].strip() for line in lines] == ["head", "w1", "w2"]
    assert "(1 GiB)" in lines[0]
    room = sum(int(line.split()[1]) for line in lines)
    assert 0 < room < SHAPE_7B.n_layer and f"room for {room} layers" in message
    assert "Add a board" in message


def test_split_layers_a_head_without_room_for_its_fixed_part() -> None:
    """The embeddings, output and buffers stay on the head: workers with room for every layer do not help."""
    est = fit.choose_slots(SHAPE_7B, 64 * units.GiB, None, None)
    _, head_fixed = layers.layer_bytes(SHAPE_7B, est)
    boards = [layers.Board("head", head_fixed - units.MiB, ""), layers.Board("w1", 64 * units.GiB, "")]
    with pytest.raises(fit.FitError, match="the head needs"):
        layers.split_layers(SHAPE_7B, est, boards)
    boards[0] = layers.Board("head", head_fixed, "")  # exactly enough: every layer on the worker
    assert layers.split_layers(SHAPE_7B, est, boards).layers == (0, SHAPE_7B.n_layer)


def test_server_args() -> None:
    est = pooled_estimate(BOARDS_3_4_4)
    split = layers.split_layers(SHAPE_7B, est, BOARDS_3_4_4)
    args = layers.server_args(split, 2)
    f = dict(zip(args[:-1:2], args[1::2], strict=True))
    assert args[-1] == "--no-repack"
    assert f["--rpc"] == "127.0.0.1:51000,127.0.0.1:51002"
    assert f["--fit"] == "off"
    # llama.cpp's output layer counts as one more offloaded layer, on the last worker; its weights stay on the head
    assert f["--n-gpu-layers"] == str(split.layers[1] + split.layers[2] + 1)
    assert f["--tensor-split"] == f"{split.layers[1]},{split.layers[2] + 1}"
    assert f["--override-tensor"] == "^(token_embd|output)[.]weight$=CPU"
    assert "--no-mmproj-offload" in args
    fixed = layers.Split((3, 5, 0), 1, 0, tuple(BOARDS_3_4_4))
    assert layers.server_args(fixed, 2)[1:8:2] == ["127.0.0.1:51000,127.0.0.1:51002", "off", "6", "5,1"]


# --- probing a worker over local sockets ------------------------------------------------------------------------

Handler = Callable[[socket.socket], None]


def bound(port: int = 0) -> socket.socket:
    """A TCP socket bound on the loopback, not listening (a connection to it is refused)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        raise
    return sock


class Server:
    """Serves a bound socket: each connection is handed to `handle`, then closed, one at a time."""

    def __init__(self, sock: socket.socket, handle: Handler) -> None:
        self.sock, self.handle = sock, handle
        self.port: int = sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Server:
        self.sock.listen(8)
        self.sock.settimeout(0.05)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                self.connections += 1
                conn.settimeout(2)
                with contextlib.suppress(OSError):
                    self.handle(conn)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        self.sock.close()


def sends(data: bytes) -> Handler:
    return lambda conn: conn.sendall(data)


def closes(conn: socket.socket) -> None:
    """Closes without a word (as spiped does when the secrets differ)."""


def answers_hello(reply: bytes, seen: list[bytes]) -> Handler:
    def handle(conn: socket.socket) -> None:
        request = b""
        while len(request) < len(HELLO_REQUEST) and (chunk := conn.recv(64)):
            request += chunk
        seen.append(request)
        conn.sendall(reply)

    return handle


class Ports:
    """The head's tunnel ends for two workers (TUNNEL_BASE moved to ports bound here) and two workers' published
    description ports."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tunnels = self._tunnels(4)
        monkeypatch.setattr(layers, "TUNNEL_BASE", self.tunnels[0].getsockname()[1])
        self.published = [bound(), bound()]
        self.servers: list[Server] = []

    @staticmethod
    def _tunnels(n: int) -> list[socket.socket]:
        rng = random.Random()
        for _ in range(100):
            base = 40000 + 2 * rng.randrange(4000)
            socks: list[socket.socket] = []
            try:
                for port in range(base, base + n):
                    socks.append(bound(port))
            except OSError:
                for s in socks:
                    s.close()
                continue
            return socks
        raise RuntimeError("no free run of ports for the tunnels")

    def rpc(self, i: int) -> socket.socket:
        return self.tunnels[2 * i]

    def info(self, i: int) -> socket.socket:
        return self.tunnels[2 * i + 1]

    def worker(self, i: int) -> settings.Worker:
        """A worker whose description port (PORT + 1, what the launcher checks first) is published[i]."""
        return settings.Worker("127.0.0.1", self.published[i].getsockname()[1] - 1)

    def serve(self, sock: socket.socket, handle: Handler) -> Server:
        server = Server(sock, handle).start()
        self.servers.append(server)
        return server

    def close(self) -> None:
        for server in self.servers:
            server.stop()
        for sock in self.tunnels + self.published:
            sock.close()


@pytest.fixture
def ports(monkeypatch: pytest.MonkeyPatch) -> Iterator[Ports]:
    p = Ports(monkeypatch)
    try:
        yield p
    finally:
        p.close()


def description(budget: int = 3 * units.GiB, **versions: str) -> dict[str, object]:
    return {
        "llmpi": llmpi.__version__,
        "llama_cpp": "b9999",
        "rpc": "7.0.0",
        "arch": "aarch64",
        "budget": budget,
        "budget_source": "4096 MiB system memory (MemTotal) minus a reserve of 256 MiB",
        "threads": 4,
        **versions,
    }


def test_describe_returns_the_workers_description(ports: Ports) -> None:
    w = ports.worker(0)
    ports.serve(ports.published[0], closes)
    info = ports.serve(ports.info(0), sends(json.dumps(description()).encode()))
    assert wire.describe(0, w) == description()
    assert info.connections == 1
    board = wire.board_from(w, wire.describe(0, w))
    assert board == layers.Board(
        f"{w.name} (aarch64)", 3 * units.GiB, str(description()["budget_source"]), "aarch64", 4
    )


def test_describe_a_channel_closed_without_a_word_names_the_secret(ports: Ports) -> None:
    w = ports.worker(0)
    ports.serve(ports.published[0], closes)
    ports.serve(ports.info(0), closes)
    with pytest.raises(wire.WorkerUnreachable, match="closed the encrypted channel: its cluster secret") as e:
        wire.describe(0, w)
    assert w.name in str(e.value) and "LLMPI_CLUSTER_SECRET" in str(e.value)


def test_describe_a_channel_not_up_yet(ports: Ports) -> None:
    w = ports.worker(0)
    ports.serve(ports.published[0], closes)
    with pytest.raises(wire.WorkerUnreachable, match=f"the channel to {re.escape(w.name)} is not up yet"):
        wire.describe(0, w)


def test_describe_a_worker_whose_port_is_closed(ports: Ports) -> None:
    w = ports.worker(0)  # bound, not listening: refused
    info = ports.serve(ports.info(0), sends(json.dumps(description()).encode()))
    with pytest.raises(wire.WorkerUnreachable, match=rf"{re.escape(w.name)} does not answer \(.*refused"):
        wire.describe(0, w)
    assert info.connections == 0  # the channel was not tried


@pytest.mark.parametrize("body", [b"<html>hello</html>", b"[1, 2]", b'{"llmpi": "0.1'])
def test_describe_something_else_is_waited_for_and_named(ports: Ports, body: bytes) -> None:
    """Not a description (another service on that port, or one cut short): the head waits, saying so."""
    ports.serve(ports.published[0], closes)
    ports.serve(ports.info(0), sends(body))
    with pytest.raises(wire.WorkerUnreachable, match="not an llmpi worker's description"):
        wire.describe(0, ports.worker(0))


def test_hello_reads_the_protocol_version(ports: Ports) -> None:
    seen: list[bytes] = []
    ports.serve(ports.rpc(1), answers_hello(hello_reply(7, 0, 0), seen))
    assert wire.hello(1, ports.worker(1)) == "7.0.0"  # the second worker's tunnel
    assert seen == [HELLO_REQUEST]
    ports.serve(ports.rpc(0), answers_hello(hello_reply(3, 4, 1), seen))
    assert wire.hello(0, ports.worker(0)) == "3.4.1"


def test_hello_a_wrong_answer_is_a_refusal(ports: Ports) -> None:
    ports.serve(ports.rpc(0), answers_hello(struct.pack("<Q", 3) + bytes([7, 0, 0]), []))
    w = ports.worker(0)
    with pytest.raises(ConfigError, match=f"worker {re.escape(w.name)} answered HELLO with 3 bytes"):
        wire.hello(0, w)


def test_hello_no_answer_is_a_wait(ports: Ports) -> None:
    w = ports.worker(0)
    with pytest.raises(wire.WorkerUnreachable, match="its RPC server does not answer"):
        wire.hello(0, w)  # nothing on the tunnel
    ports.serve(ports.rpc(0), answers_hello(b"", []))  # reads the request, closes without an answer
    with pytest.raises(wire.WorkerUnreachable, match="closed the connection before answering HELLO"):
        wire.hello(0, w)


def test_check_versions() -> None:
    w = settings.Worker("pi-b", 50052)
    own = {"llmpi": "0.1.0", "llama_cpp": "b9999", "rpc": "7.0.0"}
    info: dict[str, object] = {"llmpi": "0.1.0", "llama_cpp": "b9999"}
    wire.check_versions(w, info, "7.0.0", own)
    with pytest.raises(ConfigError, match=r"worker pi-b:50052 runs RPC protocol 6\.0\.0, this head 7\.0\.0"):
        wire.check_versions(w, info, "6.0.0", own)
    with pytest.raises(ConfigError, match=r"runs llama\.cpp build b8000, this head b9999: every board needs the same"):
        wire.check_versions(w, {**info, "llama_cpp": "b8000"}, "7.0.0", own)
    with pytest.raises(ConfigError, match=r"runs llmpi version 0\.0\.9, this head 0\.1\.0"):
        wire.check_versions(w, {**info, "llmpi": "0.0.9"}, "7.0.0", own)
    with pytest.raises(ConfigError, match=r"runs llmpi version \?, this head 0\.1\.0"):
        wire.check_versions(w, {"llama_cpp": "b9999"}, "7.0.0", own)
    # a head whose image says nothing about its llama.cpp checks what it knows
    wire.check_versions(w, {**info, "llama_cpp": "b8000"}, "6.0.0", {**own, "llama_cpp": "", "rpc": ""})


def test_own_versions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    version_file = tmp_path / "version.json"
    monkeypatch.setattr(llama_build, "VERSION_FILE", version_file)
    assert llama_build.own_versions() == {"llmpi": llmpi.__version__, "llama_cpp": "", "rpc": ""}
    version_file.write_text(json.dumps({"llama_cpp": "b9999", "rpc": "7.0.0"}))
    assert llama_build.own_versions() == {"llmpi": llmpi.__version__, "llama_cpp": "b9999", "rpc": "7.0.0"}


def test_board_from_needs_a_budget() -> None:
    w = settings.Worker("pi-b", 50052)
    with pytest.raises(ConfigError, match="worker pi-b:50052 did not say how much memory it has"):
        wire.board_from(w, {"arch": "aarch64"})
    with pytest.raises(ConfigError, match="did not say how much memory"):
        wire.board_from(w, {"budget": "lots"})
    assert wire.board_from(w, {"budget": "1024"}) == layers.Board("pi-b:50052 (?)", 1024, "")


# --- the launcher waits for its workers -------------------------------------------------------------------------


def test_wait_for_workers_marks_the_wait_and_logs_it(
    ports: Ports, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    version_file = tmp_path / "version.json"
    version_file.write_text(json.dumps({"llama_cpp": "b9999", "rpc": "7.0.0"}))
    monkeypatch.setattr(llama_build, "VERSION_FILE", version_file)
    w0, w1 = ports.worker(0), ports.worker(1)
    s = Settings.read({"LLMPI_WORKERS": f"{w0.name},{w1.name}", "LLMPI_DATA_DIR": str(tmp_path / "data")})
    ports.serve(ports.published[0], closes)
    for i, budget in ((0, 3 * units.GiB), (1, 5 * units.GiB)):
        ports.serve(ports.info(i), sends(json.dumps(description(budget)).encode()))
        ports.serve(ports.rpc(i), answers_hello(hello_reply(7, 0, 0), []))
    late = Server(ports.published[1], closes)  # the second worker's port opens after three failed tries
    ports.servers.append(late)
    marker = Path(paths.runtime_file(paths.WAITING))
    seen: dict[str, object] = {}
    naps: list[float] = []

    def sleep(seconds: float) -> None:  # the launcher's pause between tries: what is true meanwhile
        naps.append(seconds)
        if len(naps) == 1:
            seen["marker"] = marker.read_text() if marker.exists() else None
            seen["probe"] = healthcheck.probe("http://127.0.0.1:9")
        if len(naps) == 3:
            seen["still"] = marker.exists()
            late.start()

    out = io.StringIO()
    boards = waiting.wait_for_workers(s, out, sleep=sleep, clock=lambda: 0.0)
    assert naps == [waiting.WORKER_RETRY] * 3
    assert seen["marker"] == f"waiting for worker {w1.name} does not answer (Connection refused)\n"
    assert seen["probe"] == (
        "failed",
        f"llmpi is waiting: waiting for worker {w1.name} does not answer (Connection refused)",
    )
    assert seen["still"] is True
    assert not marker.exists()
    log = out.getvalue()
    assert log == (
        f"llmpi: waiting for worker {w1.name} does not answer (Connection refused)\n"  # once: the same reason
        "llmpi: every worker answers\n"
    )
    assert [(b.name, b.budget) for b in boards] == [
        (f"{w0.name} (aarch64)", 3 * units.GiB),
        (f"{w1.name} (aarch64)", 5 * units.GiB),
    ]


def test_wait_for_workers_refuses_other_versions_at_once(
    ports: Ports, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    version_file = tmp_path / "version.json"
    version_file.write_text(json.dumps({"llama_cpp": "b9999", "rpc": "7.0.0"}))
    monkeypatch.setattr(llama_build, "VERSION_FILE", version_file)
    w = ports.worker(0)
    ports.serve(ports.published[0], closes)
    ports.serve(ports.info(0), sends(json.dumps(description()).encode()))
    ports.serve(ports.rpc(0), answers_hello(hello_reply(6, 0, 0), []))
    s = Settings.read({"LLMPI_WORKERS": w.name})
    out = io.StringIO()
    with pytest.raises(ConfigError, match=rf"worker {re.escape(w.name)} runs RPC protocol 6\.0\.0, this head 7\.0\.0"):
        waiting.wait_for_workers(s, out)
    assert out.getvalue() == ""
    assert waiting.wait_for_workers(Settings.read({}), out) == []  # no workers: nothing to wait for


def test_the_health_check_reports_the_wait(tmp_path: Path) -> None:
    Path(paths.make_runtime_dir())
    closed = bound()
    try:
        base = f"http://127.0.0.1:{closed.getsockname()[1]}"
        Path(paths.runtime_file(paths.WAITING)).write_text(
            "waiting for worker pi-b:50052 does not answer (No route to host)\n"
        )
        assert healthcheck.probe(base) == (
            "failed",
            "llmpi is waiting: waiting for worker pi-b:50052 does not answer (No route to host)",
        )
        Path(paths.runtime_file(paths.WAITING)).unlink()
        assert healthcheck.probe(base)[0] == "starting"  # the launcher is on to the next step
    finally:
        closed.close()


# --- the launcher's plan for a head -------------------------------------------------------------------------------


@pytest.fixture
def cluster_env(tmp_path: Path) -> dict[str, str]:
    model = llama_like(tmp_path / "tiny-chat.Q4_K_M.gguf", n_layer=8, n_embd=256)
    return {
        "LLMPI_MODEL": str(model),
        "LLMPI_DATA_DIR": str(tmp_path / "data"),
        "LLMPI_WORKERS": "a,b",
        "LLMPI_MEMORY_LIMIT": "400M",
    }


def workers_boards(mib: int) -> list[layers.Board]:
    return [
        layers.Board("a:50052 (aarch64)", mib * units.MiB, "worker a's memory"),
        layers.Board("b:50052 (aarch64)", mib * units.MiB, "worker b's memory"),
    ]


def table_layers(notes: list[str]) -> dict[str, int]:
    out = {}
    for note in notes:
        for m in re.finditer(r"^  (.+?): (\d+) layers, needs .+ of .+$", note, re.MULTILINE):
            out[m.group(1)] = int(m.group(2))
    return out


def test_plan_with_workers(cluster_env: dict[str, str]) -> None:
    p = serving.plan(Settings.read(cluster_env), HW, workers_boards(100))
    f = dict(zip(p.argv[1:], [*p.argv[2:], ""], strict=True))
    assert p.argv[0] == "llama-server" and f["--model"] == cluster_env["LLMPI_MODEL"]
    assert f["--rpc"] == "127.0.0.1:51000,127.0.0.1:51002" and f["--fit"] == "off" and "--no-repack" in p.argv
    shares = [int(n) for n in f["--tensor-split"].split(",")]
    assert len(shares) == 2 and int(f["--n-gpu-layers"]) == sum(shares) > 1
    shares[-1] -= 1  # the output layer's place (its weights stay on the head)
    assert "--models-preset" not in p.argv and "--models-max" not in p.argv
    assert [path.name for path in p.files] == ["health.json"] and p.announced == ["tiny-chat.Q4_K_M"]
    layers = table_layers(p.notes)
    assert list(layers) == ["this board (head)", "a:50052 (aarch64)", "b:50052 (aarch64)"]
    assert sum(layers.values()) == 8 and [layers["a:50052 (aarch64)"], layers["b:50052 (aarch64)"]] == shares
    assert any(n.startswith("cluster of 3 boards, 8 layers of about ") for n in p.notes)
    assert p.notes[0].startswith("model tiny-chat.Q4_K_M.gguf: ") and p.notes[0].endswith(" across the boards")


def test_plan_with_workers_too_small(cluster_env: dict[str, str]) -> None:
    cluster_env["LLMPI_MEMORY_LIMIT"] = "320M"
    with pytest.raises(ConfigError) as e:
        serving.plan(Settings.read(cluster_env), HW, workers_boards(64))
    message = str(e.value)
    assert message.startswith("the model does not fit across 3 boards: 8 layers")
    lines = message.splitlines()
    assert any(
        line.startswith("  this board (head): ") and "320 MiB LLMPI_MEMORY_LIMIT minus a reserve of 256 MiB" in line
        for line in lines
    )
    assert any(line.startswith("  a:50052 (aarch64): ") and "(worker a's memory)" in line for line in lines)
    assert any(line.startswith("  b:50052 (aarch64): ") for line in lines)


def test_plan_with_too_little_memory_even_pooled(cluster_env: dict[str, str]) -> None:
    """Not even the smallest context fits the boards' memory together: the fit's own message, then each board."""
    cluster_env["LLMPI_MEMORY_LIMIT"] = "260M"
    with pytest.raises(ConfigError) as e:
        serving.plan(Settings.read(cluster_env), HW, workers_boards(20))
    message = str(e.value)
    assert message.startswith("the model does not fit in memory with ") and "(3 boards together)" in message
    lines = message.splitlines()
    assert lines[1].startswith("The boards (a worker's 48 MiB of overhead not counted for layers):")
    assert lines[2].startswith("  this board (head): 4 MiB (260 MiB LLMPI_MEMORY_LIMIT minus a reserve of 256 MiB")
    assert lines[3] == "  a:50052 (aarch64): 20 MiB (worker a's memory)"


# --- the worker ---------------------------------------------------------------------------------------------------

PROC_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:C3E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 101 1 0 100 0 0 10 0
   1: 0100007F:C3E9 0100007F:A410 01 00000000:00000000 00:00000000 00000000  1000        0 102 1 0 20 4 30 10 -1
"""
PROC_TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue
   0: 00000000000000000000000000000000:C384 00000000000000000000000000000000:0000 0A 00000000:00000000
"""


def test_listening_ports_from_proc(tmp_path: Path) -> None:
    (tmp_path / "tcp").write_text(PROC_TCP)
    assert worker.listening_ports(tmp_path) == {50152}  # 50153 is a connection, not a listener
    (tmp_path / "tcp6").write_text(PROC_TCP6)
    assert worker.listening_ports(tmp_path) == {50152, 50052}
    assert worker.listening_ports(tmp_path / "nothing") == set()


def test_worker_health(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    up = {50152, 50153, 50052, 50053}
    monkeypatch.setattr(worker, "listening_ports", lambda: up)
    assert worker.health() == 0 and "worker serving on port 50052" in capsys.readouterr().out
    up.discard(50053)
    assert worker.health() == 1
    assert capsys.readouterr().out == "not listening yet: the description's channel (spiped) (port 50053)\n"


def test_worker_rpc_argv_and_description() -> None:
    s = Settings.read({"LLMPI_MEMORY_LIMIT": "2G"})
    assert worker.rpc_argv(s, HW) == [
        "ggml-rpc-server",
        "--host",
        "127.0.0.1",
        "--port",
        "50152",
        "--threads",
        "4",  # the physical cores
        "-c",
    ]
    assert worker.rpc_argv(Settings.read({"LLMPI_THREADS": "3"}), HW)[6] == "3"
    info = worker.description(s, HW)
    assert info["budget"] == 2 * units.GiB - units.DEFAULT_RESERVE and info["threads"] == 4
    assert info["budget_source"] == "2048 MiB LLMPI_MEMORY_LIMIT minus a reserve of 256 MiB"
    assert info["llmpi"] == llmpi.__version__
    # what the head makes of it, after the JSON round trip
    board = wire.board_from(settings.Worker("pi-b", 50052), json.loads(json.dumps(info)))
    assert (board.budget, board.source, board.threads) == (
        2 * units.GiB - units.DEFAULT_RESERVE,
        info["budget_source"],
        4,
    )


# --- the version ------------------------------------------------------------------------------------------------


def test_version_matches_pyproject() -> None:
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert llmpi.__version__ == pyproject["project"]["version"]


def test_health_check_names_a_worker_that_stopped_answering() -> None:
    """A serving head whose worker went away while idle is unhealthy at the next check, naming the worker."""
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen()
    try:
        port = listening.getsockname()[1]  # a worker's description port (PORT + 1) that answers
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        dead = closed.getsockname()[1]
        closed.close()  # and one that does not
        env = {"LLMPI_WORKERS": f"127.0.0.1:{port - 1},127.0.0.1:{dead - 1}"}
        missing = healthcheck.workers_missing(Settings.read(env).workers)
        assert len(missing) == 1 and missing[0].startswith(f"127.0.0.1:{dead - 1} (")
        assert healthcheck.workers_missing(Settings.read({"LLMPI_WORKERS": f"127.0.0.1:{port - 1}"}).workers) == []
    finally:
        listening.close()


def test_lost_channels_are_the_head_connections_closed_by_the_other_end(tmp_path: Path) -> None:
    """llama-server's connections to the tunnels' RPC ports in CLOSE_WAIT (08): that worker's end went away."""
    (tmp_path / "tcp").write_text(
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        # llama-server -> 127.0.0.1:51002 (worker 1's RPC tunnel), closed by the other end
        "   0: 0100007F:A000 0100007F:C73A 08 00000000:00000000 00:00000000 00000000  1000  0 1\n"
        # llama-server -> 127.0.0.1:51000 (worker 0's), established
        "   1: 0100007F:A002 0100007F:C738 01 00000000:00000000 00:00000000 00000000  1000  0 2\n"
        # another connection in CLOSE_WAIT, not to a tunnel
        "   2: 0100007F:A004 0100007F:1F90 08 00000000:00000000 00:00000000 00000000  1000  0 3\n"
    )
    assert wire.lost_channels(2, tmp_path) == [1]
    assert wire.lost_channels(1, tmp_path) == []
    assert wire.lost_channels(2, tmp_path / "missing") == []
