"""Issue 23's sealed edges, each with the attack it stops: workers.json from the announce container pasted into
supervisord's configuration, a link planted in the shared /announce folder, a manifest that names a file outside
the models directory, and conversion asked to run a model repo's own code."""

from __future__ import annotations

import configparser
import io
import json
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

from llmpi.cli import models as cli_models
from llmpi.cluster import channels
from llmpi.core import hosts, paths
from llmpi.core.env import ConfigError
from llmpi.core.files import read_no_follow, write_atomic
from llmpi.core.settings import Settings, Worker
from llmpi.lan import announce, discovery
from llmpi.plan import model_files
from llmpi_prepare import convert, sealed
from llmpi_prepare.hub import PrepareError

# --- announce -> head: addresses and ports only -------------------------------------------------------------------


@pytest.mark.parametrize(
    "host", ["192.168.1.20", "fd00::1", "pi-worker-2", "pi5.lan", "a" * 63 + ".local", "10.0.0.255"]
)
def test_addresses_and_host_names_pass(host: str) -> None:
    assert hosts.is_host(host)


@pytest.mark.parametrize(
    "host",
    [
        "10.0.0.2\n[program:x]\ncommand=sh -c 'cat /data/api_key'",
        "pi\n",
        "pi worker",
        "pi%(ENV_LLMPI_CLUSTER_SECRET)s",
        "fe80::1%eth0",
        "fe80::1%\n[program:x]",
        "[fd00::1]",
        "-pi",
        "pi-",
        "a..b",
        "1.2.3",
        "a" * 64,
        "bücher",
        "",
        None,
        42,
    ],
)
def test_anything_else_is_not_a_host(host: object) -> None:
    assert not hosts.is_host(host)


@pytest.mark.parametrize("port", [0, 65536, -1, "50052", True, 50052.0, None])
def test_ports_are_ints_from_1_to_65535(port: object) -> None:
    assert not hosts.is_port(port)
    assert hosts.is_port(1) and hosts.is_port(65535)


def test_workers_json_with_a_config_line_in_a_host_is_dropped_and_logged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The announce container (host network, LAN input) writes workers.json; a host holding "\\n[program:x]" would
    have been a program of its own in the head's supervisord configuration."""
    evil = {"host": "10.0.0.9\n[program:x]\ncommand=/bin/sh -c id", "port": 50052}
    (tmp_path / paths.WORKERS_FILE).write_text(
        json.dumps(
            [
                {"host": "10.0.0.2", "port": 50052},
                evil,
                {"host": "10.0.0.3", "port": "50052\n[program:y]"},
                {"host": "10.0.0.4", "port": 65535},  # no room for the info port
                {"host": "fd00::7", "port": 50052},
                "10.0.0.5:50052",
            ]
        )
    )
    assert channels.heard_workers(tmp_path) == ["10.0.0.2:50052", "[fd00::7]:50052"]
    log = capsys.readouterr().err
    assert log.count("ignoring") == 4 and "\\n[program:x]" in log and "\n[program:x]" not in log


def test_workers_json_behind_a_link_is_not_read(tmp_path: Path) -> None:
    """A link planted at workers.json (the announce container can write /announce) is never followed."""
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps([{"host": "10.0.0.2", "port": 50052}]))
    (tmp_path / paths.WORKERS_FILE).symlink_to(target)
    assert channels.heard_workers(tmp_path) == []
    with pytest.raises(OSError):
        read_no_follow(tmp_path / paths.WORKERS_FILE)


def test_a_fifo_or_a_huge_file_is_refused_without_waiting(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(OSError, match="not a regular file"):
        read_no_follow(tmp_path / "fifo")
    (tmp_path / "big").write_text("x" * 101)
    with pytest.raises(OSError, match="longer than 100 bytes"):
        read_no_follow(tmp_path / "big", limit=100)


def test_the_announcer_never_writes_an_address_that_is_not_one(capsys: pytest.CaptureFixture[str]) -> None:
    good = discovery.Found("w1", "w1.local.", ("10.0.0.2",), 50052, {"version": "1"})
    scoped = discovery.Found("w2", "w2.local.", ("10.0.0.3%\n[program:x]",), 50052, {})  # ipv4s keeps the suffix
    zero = discovery.Found("w3", "w3.local.", ("10.0.0.4",), 0, {})
    assert [w["host"] for w in announce.workers_heard([good, scoped, zero])] == ["10.0.0.2"]
    assert capsys.readouterr().out.count("ignoring the worker") == 2  # the announcer logs on stdout


def test_supervisord_configuration_gets_no_line_from_a_worker(tmp_path: Path) -> None:
    """LLMPI_WORKERS too: whatever the source, a host that is not an address or a name is refused, not pasted."""
    key = tmp_path / "cluster.key"
    ok = channels.head_programs((Worker("10.0.0.2", 50052), Worker("pi-3", 50060)), key)
    ini = configparser.ConfigParser(interpolation=None)
    ini.read_string(ok)
    assert len(ini.sections()) == 4 and all(s.startswith("program:channel-") for s in ini.sections())
    for bad in ("10.0.0.2\n[program:x]", "pi 3", "pi%(here)s"):
        with pytest.raises(ConfigError, match="not an IP address or host name"):
            channels.head_programs((Worker(bad, 50052),), key)
    with pytest.raises(ConfigError, match="key file"):
        channels.head_programs((Worker("10.0.0.2", 50052),), tmp_path / "run\n[program:x]" / "cluster.key")


# --- write_atomic: a link planted in a shared folder -------------------------------------------------------------


def test_write_atomic_does_not_follow_a_link_at_the_old_temporary_name(tmp_path: Path) -> None:
    """The announce container could plant `.announce.json.<pid>.partial` -> /data/api_key in /announce: the old
    fixed name was opened with O_CREAT|O_TRUNC and the key truncated. The name is random now and made new."""
    shared, secret = tmp_path / "announce", tmp_path / "api_key"
    shared.mkdir()
    secret.write_text("sk-llmpi-secret\n")
    os.chmod(secret, 0o600)
    for pid in (os.getpid(), *range(1, 200)):
        (shared / f".announce.json.{pid}.partial").symlink_to(secret)
    write_atomic(shared / "announce.json", '{"models": []}', 0o640)
    assert secret.read_text() == "sk-llmpi-secret\n"
    assert (shared / "announce.json").read_text() == '{"models": []}'
    assert (shared / "announce.json").stat().st_mode & 0o777 == 0o640
    assert not (shared / "announce.json").is_symlink()
    assert [p for p in shared.iterdir() if not p.is_symlink()] == [shared / "announce.json"]


def test_write_atomic_keeps_its_behaviour(tmp_path: Path) -> None:
    target = tmp_path / "new" / "dir" / "key"
    old = os.umask(0o077)
    try:
        write_atomic(target, "one", 0o644)
    finally:
        os.umask(old)
    assert target.read_text() == "one" and target.stat().st_mode & 0o777 == 0o644  # the umask does not take it
    assert target.parent.stat().st_mode & 0o777 == 0o700
    write_atomic(target, "two", 0o600)
    assert target.read_text() == "two" and target.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in target.parent.iterdir()) == ["key"]  # no temporary file left


def test_write_atomic_leaves_nothing_behind_on_failure(tmp_path: Path) -> None:
    with pytest.raises(UnicodeEncodeError):
        write_atomic(tmp_path / "f", "\udcff")
    assert list(tmp_path.iterdir()) == []


# --- manifests confined to the models directory ------------------------------------------------------------------


def _settings(tmp_path: Path) -> Settings:
    return Settings.read({"LLMPI_DATA_DIR": str(tmp_path / "data"), "LLMPI_MODEL": "/nonexistent/served.gguf"})


def _manifest(models: Path, stem: str, **fields: object) -> Path:
    path = models / f"{stem}.json"
    path.write_text(json.dumps({"file": f"{stem}.gguf", "quant": "Q4_K_M", **fields}))
    return path


@pytest.mark.parametrize(
    "file", ["../api_key", "/data/api_key", "..", ".", "sub/x.gguf", "x\n.gguf", "", 7, ["x.gguf"], "a" * 256]
)
def test_a_manifest_naming_a_file_elsewhere_is_refused(file: object, tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    with pytest.raises(ConfigError, match="refused"):
        model_files.confined(models, file, "the manifest x.json")


def test_llmpi_models_rm_never_deletes_outside_the_models_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A manifest with file "../api_key" (and its projector the same) was listed and `llmpi models rm` deleted the
    key; now the manifest is refused with its reason, the model is not listed, and rm finds nothing to delete."""
    s = _settings(tmp_path)
    models = s.models_dir
    models.mkdir(parents=True)
    key = s.data_dir / "api_key"
    key.write_text("sk-llmpi-secret\n")
    (s.data_dir / "api_key.jinja").write_text("a template beside the key")
    _manifest(models, "evil", file="../api_key", name="evil")
    _manifest(models, "evil2", mmproj={"file": "../api_key"}, name="evil2")
    (models / "evil2.gguf").write_bytes(b"GGUF")
    (models / "evil3.gguf").symlink_to(key)  # a link that leads out
    _manifest(models, "evil3", name="evil3")
    assert [m.name for m in model_files.local_models(models)] == []
    err = capsys.readouterr().err
    assert err.count("refused") == 3 and "../api_key" in err and "leads out" in err
    for name in ("evil", "evil2", "evil3"):
        with pytest.raises(ConfigError, match="no pulled model"):
            cli_models.models_rm(s, name, True, io.StringIO())
    assert key.read_text() == "sk-llmpi-secret\n" and (s.data_dir / "api_key.jinja").exists()


def test_a_model_name_with_a_newline_or_a_bracket_is_refused(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    for i, name in enumerate(("x\n[other]\nmodel = /data/api_key", "[x]", "a/b")):
        _manifest(models, f"m{i}", name=name)
        (models / f"m{i}.gguf").write_bytes(b"GGUF")
    reasons: list[str] = []
    assert model_files.local_models(models, reasons.append) == []
    assert len(reasons) == 3


def test_llmpi_models_rm_removes_a_confined_model_and_its_projector(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = _settings(tmp_path)
    models = s.models_dir
    models.mkdir(parents=True)
    _manifest(models, "good", name="good", mmproj={"file": "good.mmproj.gguf", "size": 4})
    (models / "good.gguf").write_bytes(b"GGUF")
    (models / "good.mmproj.gguf").write_bytes(b"GGUF")
    (s.data_dir / "api_key").write_text("k")
    [m] = model_files.local_models(models)
    assert m.mmproj == models / "good.mmproj.gguf"
    monkeypatch.setattr(cli_models, "apply_change", lambda *_: None)  # no router here to tell
    assert cli_models.models_rm(s, "good", False, io.StringIO()).startswith("removed good")
    assert sorted(p.name for p in s.data_dir.rglob("*")) == ["api_key", "models"]


def test_the_served_models_projector_is_confined_to_its_directory(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    with pytest.raises(ConfigError, match="not a plain file name"):
        model_files.find_mmproj("", model, {"mmproj": {"file": "../../etc/passwd"}})


# --- conversion: never a repo's own code, offline ----------------------------------------------------------------


def _fake_transformers(monkeypatch: pytest.MonkeyPatch) -> dict[str, ModuleType]:
    """transformers' shape where it matters: dynamic_module_utils and an Auto* module that imported its functions."""
    calls: list[str] = []

    def resolve(trust_remote_code: object, model_name: object, has_local_code: bool, has_remote_code: bool) -> object:
        calls.append("resolve")
        return trust_remote_code

    def load_code(*_: object) -> object:
        calls.append("code ran")
        return object

    mods: dict[str, ModuleType] = {}
    for name in ("transformers", *sealed.AUTO_MODULES):
        m = ModuleType(name)
        if name != "transformers":
            m.resolve_trust_remote_code = resolve  # type: ignore[attr-defined]
            m.get_class_from_dynamic_module = load_code  # type: ignore[attr-defined]
        mods[name] = m
        monkeypatch.setitem(sys.modules, name, m)
    mods["transformers"].calls = calls  # type: ignore[attr-defined]
    return mods


def test_sealed_transformers_never_trusts_a_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    mods = _fake_transformers(monkeypatch)
    assert sealed.seal_transformers() > 0
    tok = mods["transformers.models.auto.tokenization_auto"]
    # a class transformers has: used, whatever trust_remote_code the converter asked for
    assert tok.resolve_trust_remote_code(True, "repo", True, True) is False
    # only the repo's code could load it (auto_map, no class in transformers): refused before any of it runs
    with pytest.raises(sealed.RemoteCodeRefused, match="never runs a model repo's code"):
        tok.resolve_trust_remote_code(True, "repo", False, True)
    with pytest.raises(sealed.RemoteCodeRefused):
        tok.get_class_from_dynamic_module("tokenization_evil.EvilTokenizer", "repo")
    assert mods["transformers"].calls == []


def test_a_conversion_that_needs_the_repos_code_is_refused_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The converter run as it is run (llmpi_prepare.sealed, the environment convert_env gives it) on a stand-in
    that asks transformers for a repo's tokenizer with trust_remote_code=True, as convert_hf_to_gguf.py does."""
    llama_cpp = tmp_path / "llama.cpp"
    llama_cpp.mkdir()
    fake = tmp_path / "fake"
    (fake / "transformers").mkdir(parents=True)
    (fake / "transformers" / "__init__.py").write_text("")
    (fake / "transformers" / "dynamic_module_utils.py").write_text(
        "def resolve_trust_remote_code(t, name, has_local_code, has_remote_code):\n    return t\n"
    )
    (llama_cpp / "convert_hf_to_gguf.py").write_text(
        "import os, sys\n"
        "from transformers import dynamic_module_utils as d\n"
        "print('offline', os.environ.get('HF_HUB_OFFLINE'), os.environ.get('TRANSFORMERS_OFFLINE'))\n"
        "if d.resolve_trust_remote_code(True, sys.argv[1], False, True):\n"
        "    open(sys.argv[1] + '/PWNED', 'w').write('the repo code ran')\n"
    )
    repo = tmp_path / "repo"
    repo.mkdir()
    monkeypatch.setenv("PYTHONPATH", str(fake))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(PrepareError, match=r"conversion refused: .* needs its own Python code"):
        convert.convert(repo, tmp_path / "out.gguf", llama_cpp)
    assert not (repo / "PWNED").exists()
    assert "offline 1 1" in (tmp_path / "out.convert.log").read_text()
    assert not (tmp_path / "out.gguf").exists()


def test_convert_env_is_offline_and_finds_the_seal() -> None:
    env = convert.convert_env({"PATH": "/bin", "HF_HUB_OFFLINE": "0"})
    assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1" and env["PATH"] == "/bin"
    assert (Path(env["PYTHONPATH"].split(os.pathsep)[0]) / "llmpi_prepare" / "sealed.py").is_file()


def test_prepare_compose_service_mounts_no_keys() -> None:
    """compose's `prepare` mounts the models volume only, never the data volume (keys, cluster secret), and not
    through a volume `subpath` (Docker before 26 ignores it and mounts the whole volume)."""
    import yaml

    root = Path(__file__).resolve().parents[2]
    compose = yaml.safe_load((root / "compose.yaml").read_text())
    prepare, llmpi = compose["services"]["prepare"], compose["services"]["llmpi"]
    assert prepare["volumes"] == ["llmpi-models:/data/models"]
    assert "llmpi-models:/data/models" in llmpi["volumes"] and "llmpi-data:/data" in llmpi["volumes"]
    assert "HF_HOME=/data/models/.cache/huggingface" in prepare["environment"]
