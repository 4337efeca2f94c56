"""llmpi.lan.announce and llmpi.lan.discovery without a network: which addresses are announced, the TXT records, the
announcer's publish/withdraw decisions, the finder's choice, and LLMPI_WORKERS=auto's resolution."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from llmpi import __version__
from llmpi.cluster import channels
from llmpi.core import paths
from llmpi.core.env import ConfigError
from llmpi.core.settings import Settings
from llmpi.host import hardware
from llmpi.lan import announce, discovery
from llmpi.plan import serving
from llmpi.process import launcher

pytestmark = [pytest.mark.unit]

PI_HOST = [
    ("lo", ["127.0.0.1", "::1"]),
    ("eth0", ["192.168.1.20", "fe80::1"]),
    ("wlan0", ["192.168.1.21", "169.254.3.4"]),
    ("docker0", ["172.17.0.1"]),
    ("br-0123456789ab", ["172.19.0.1"]),
    ("veth12ab", ["fe80::2"]),
]


def test_only_home_network_addresses_are_announced() -> None:
    assert announce.lan_addresses(PI_HOST) == ["192.168.1.20", "192.168.1.21"]


def test_a_port_published_on_one_address_is_announced_there_alone() -> None:
    assert announce.lan_addresses(PI_HOST, "192.168.1.21") == ["192.168.1.21"]
    assert announce.lan_addresses(PI_HOST, "0.0.0.0") == ["192.168.1.20", "192.168.1.21"]
    assert announce.lan_addresses(PI_HOST, "127.0.0.1") == []  # loopback only: nothing to announce


def test_txt_records_name_version_api_models_and_auth_never_a_key() -> None:
    api, page = announce.appliance_services("pi", 8080, {"models": ["qwen3-4b", "minilm"], "auth": True, "webui": True})
    assert (api.type, api.name, api.port) == (discovery.SERVICE_TYPE, "llmpi on pi", 8080)
    assert api.txt == {"version": __version__, "api": "/v1", "models": "qwen3-4b,minilm", "auth": "key"}
    assert (page.type, page.name, page.txt) == (discovery.HTTP_TYPE, "llmpi chat on pi", {"path": "/"})
    only_api = announce.appliance_services("pi", 9000, {"models": [], "auth": False, "webui": False})
    assert [s.txt["auth"] for s in only_api] == ["none"] and only_api[0].port == 9000


def test_a_long_model_list_is_cut_to_fit_one_txt_string() -> None:
    names = [f"model-number-{i:02d}-instruct-q4_k_m" for i in range(20)]
    text = announce.short_list(names)
    assert len(text) <= announce.TXT_VALUE_MAX and text.endswith(f",+{20 - text.count(',')}")
    kept = text.split(",")[:-1]
    assert kept == names[: len(kept)]
    assert announce.short_list(["a", "b"]) == "a,b"


class FakeBackend:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def publish(self, services: Sequence[announce.Service]) -> None:
        self.calls.append("publish " + ",".join(s.txt.get("models", "") for s in services))

    def withdraw(self) -> None:
        self.calls.append("withdraw")

    def close(self) -> None:
        self.calls.append("close")


def test_announced_while_the_server_answers_withdrawn_after_three_missed_checks() -> None:
    backend = FakeBackend()
    up = [True, True, False, False, True, False, False, False, False]
    state = {"models": ["a"]}
    a = announce.Announcer(backend, lambda: announce.appliance_services("pi", 8080, state)[:1], lambda: up.pop(0))
    a.step()
    state["models"] = ["a", "b"]  # llmpi models pull: the TXT follows
    a.step()
    for _ in range(7):
        a.step()
    assert backend.calls == ["publish a", "publish a,b", "publish a,b", "withdraw"]
    assert not a.published


def test_avahi_forced_but_absent_is_refused_with_the_reason(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(announce, "DBUS_SOCKET", tmp_path / "no-socket")
    with pytest.raises(ConfigError, match="LLMPI_ANNOUNCE=avahi but avahi cannot be used: no D-Bus socket at "):
        announce.choose_backend("avahi", "pi", ["192.168.1.20"])


def test_announce_setting() -> None:
    assert Settings.read({}).announce == "auto"
    assert Settings.read({"LLMPI_ANNOUNCE": "OFF"}).announce == "off"
    assert Settings.read({"LLMPI_ANNOUNCE": "on"}).announce == "auto"
    with pytest.raises(ConfigError, match="LLMPI_ANNOUNCE='bonjour'"):
        Settings.read({"LLMPI_ANNOUNCE": "bonjour"})


def found(name: str, host: str, port: int = 8080) -> discovery.Found:
    return discovery.Found(name, host, ("192.168.1.20", "fe80::1%eth0"), port, {"api": "/v1", "auth": "key"})


def test_the_finder_picks_by_number_or_name() -> None:
    both = [found("llmpi on kitchen", "kitchen.local"), found("llmpi on study", "study.local", 9000)]
    assert discovery.choose(both, None).host == "kitchen.local"
    assert discovery.choose(both, "2").base_url == "http://study.local:9000/v1"
    assert discovery.choose(both, "STUDY").address_url() == "http://192.168.1.20:9000/v1"
    with pytest.raises(LookupError, match="no appliance found matches 'garage'"):
        discovery.choose(both, "garage")


def test_the_head_keeps_the_workers_heard_by_address() -> None:
    heard = announce.workers_heard(
        [discovery.Found("llmpi worker on pi2", "pi2.local", ("fe80::9", "192.168.1.32"), 50052, {"version": "0.1.0"})]
    )
    assert heard == [{"host": "192.168.1.32", "port": 50052, "name": "llmpi worker on pi2", "version": "0.1.0"}]


def test_workers_auto_takes_the_workers_heard_at_start(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LLMPI_RUNTIME_DIR", str(tmp_path / "run"))
    env = {"LLMPI_WORKERS": "auto", "LLMPI_ANNOUNCE_DIR": str(tmp_path)}
    assert Settings.read(env).workers == () and Settings.read(env).workers_auto  # before the start's resolution
    (tmp_path / paths.WORKERS_FILE).write_text(
        json.dumps([{"host": "192.168.1.31", "port": 50052}, {"host": "192.168.1.32", "port": 50052}])
    )
    assert channels.resolve_auto_workers(tmp_path, wait=1, settle=0) == ["192.168.1.31:50052", "192.168.1.32:50052"]
    assert [w.host for w in Settings.read(env).workers] == ["192.168.1.31", "192.168.1.32"]


def test_workers_auto_with_none_heard_is_a_refusal_naming_what_to_do(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LLMPI_RUNTIME_DIR", str(tmp_path / "run"))
    assert channels.resolve_auto_workers(tmp_path, wait=0.1, settle=0) == []
    with pytest.raises(ConfigError, match=r"no worker announced itself.*docker compose restart llmpi"):
        launcher.prepare({"LLMPI_WORKERS": "auto", "LLMPI_ANNOUNCE_DIR": str(tmp_path)}, hardware.detect())


def test_the_announcer_is_told_the_models_and_a_failure_to_tell_it_does_not_stop_the_server(tmp_path: Path) -> None:
    s = Settings.read({"LLMPI_ANNOUNCE_DIR": str(tmp_path), "LLMPI_WEBUI": "off"})
    plan = serving.Plan(argv=["llama-server"], announced=["qwen3-4b", "minilm"])
    out = io.StringIO()
    announce.tell_announcer(s, plan.announced, out)
    state = announce.read_state(tmp_path)
    # HTTPS on (the default): its port, and the CA's fingerprint once the launcher made the CA (not yet here)
    assert state == {"models": ["qwen3-4b", "minilm"], "auth": True, "webui": False, "ollama": "11434", "tls": "8443",
                     "ca": ""}  # fmt: skip
    assert out.getvalue() == ""
    services = announce.appliance_services("pi", 8080, state)
    assert services[0].txt["ollama"] == "11434"  # the Ollama API's port: scripts/find prints its URL
    assert services[0].txt["tls"] == "1" and services[0].txt["tls_port"] == "8443" and "ca" not in services[0].txt
    off = Settings.read({"LLMPI_ANNOUNCE_DIR": str(tmp_path), "LLMPI_OLLAMA_PORT": "off"})
    announce.tell_announcer(off, plan.announced, out)
    assert "ollama" not in announce.appliance_services("pi", 8080, announce.read_state(tmp_path))[0].txt
    blocked = Settings.read({"LLMPI_ANNOUNCE_DIR": str(tmp_path / "file" / "dir")})
    (tmp_path / "file").write_text("not a directory")
    announce.tell_announcer(blocked, plan.announced, out)
    assert out.getvalue().startswith("llmpi: the network announcement lists no models: cannot write ")


def test_llmpi_find_is_a_console_script_of_the_package() -> None:
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "llmpi-find"]
    assert script.load() is discovery.main


def test_the_announcer_follows_the_network_wifi_after_boot_then_a_new_address(monkeypatch: pytest.MonkeyPatch) -> None:
    backends: list[FakeBackend] = []

    def fake_backend(mode: str, hostname: str, addresses: Sequence[str]) -> FakeBackend:
        backends.append(FakeBackend())
        backends[-1].calls.append("on " + ",".join(addresses))
        return backends[-1]

    monkeypatch.setattr(announce, "choose_backend", fake_backend)
    state = {"models": ["a"]}
    session = announce.Session(
        "auto", "pi", "", lambda: announce.appliance_services("pi", 8080, state)[:1], lambda: True
    )
    session.tick([("lo", ["127.0.0.1"]), ("docker0", ["172.17.0.1"])])  # at boot, before Wi-Fi
    assert backends == [] and session.announcer is None
    session.tick([("wlan0", ["192.168.1.21"])])
    session.tick([("wlan0", ["192.168.1.21"])])
    session.tick([("wlan0", ["192.168.1.40"])])  # a new lease
    assert session.close()
    assert [b.calls for b in backends] == [
        ["on 192.168.1.21", "publish a", "publish a", "close"],
        ["on 192.168.1.40", "publish a", "close"],
    ]
    assert not session.close()


class FakeZeroconf:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def register_service(self, info: object, allow_name_change: bool) -> None:
        self.calls.append("register")

    def update_service(self, info: object) -> None:
        self.calls.append("update")

    def unregister_all_services(self) -> None:
        self.calls.append("goodbye")


def test_python_zeroconf_hears_only_of_changes() -> None:
    backend = announce.ZeroconfBackend.__new__(announce.ZeroconfBackend)  # its Zeroconf stand-in, no socket
    fake = FakeZeroconf()
    backend.server, backend.addresses, backend.published = "pi.local.", ["192.168.1.20"], {}
    backend.zc = fake  # type: ignore[assignment]
    api = announce.appliance_services("pi", 8080, {"models": ["a"]})[0]
    backend.publish([api])
    backend.publish([api])  # every 5 s while the server answers: nothing sent
    backend.publish([announce.Service(api.type, api.name, api.port, {**api.txt, "models": "a,b"})])
    backend.withdraw()
    assert fake.calls == ["register", "update", "goodbye"]
