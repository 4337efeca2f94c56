from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path

import pytest

from llmpi.cli import main as cli
from llmpi.core import failure, keys, paths, units
from llmpi.core.env import ConfigError, file_env
from llmpi.core.settings import Settings
from llmpi.host import hardware
from llmpi.models import resolve
from llmpi.plan import fit, serving
from llmpi.process import fatal_listener, launcher
from tests.ggufmaker import llama_like
from tests.unit.helpers import HW, flags, preset_sections, pulled

pytestmark = pytest.mark.unit


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    model = llama_like(tmp_path / "tiny-chat.Q4_K_M.gguf")
    # no announcer beside it (its directory does not exist): nothing to wait for, nothing written to /announce
    return {
        "LLMPI_MODEL": str(model),
        "LLMPI_DATA_DIR": str(tmp_path / "data"),
        "LLMPI_ANNOUNCE_DIR": str(tmp_path / "ann"),
    }


def test_defaults(env: dict[str, str]) -> None:
    p = launcher.prepare(env, HW, out=io.StringIO()).plan
    f = flags(p.argv)
    assert p.argv[0] == "llama-server"
    assert f["--model"] == env["LLMPI_MODEL"]
    assert f["--alias"] == "tiny-chat.Q4_K_M"
    assert f["--threads"] == "4" and f["--threads-batch"] == "4"  # physical cores, not SMT siblings
    # 8 slots, each with a cache of its own 4096 tokens (the test model's trained context)
    assert f["--parallel"] == "8" and "--no-kv-unified" in f and "--kv-unified" not in f
    assert f["--ctx-size"] == str(8 * 4096)
    assert f["--max-tokens"] == "1024" and f["--queue-max"] == "8" and "--no-remote-media" in f
    assert f["--drain-timeout"] == "25"
    assert int(str(f["--cache-ram"])) > 0  # the prompt cache, sized from the budget
    assert (f["--host"], f["--port"]) == ("0.0.0.0", "8080")
    assert "--metrics" in f
    assert f["--log-verbosity"] == "3"
    assert f["--path"] is not None and f["--path"].endswith("service/web")
    key_file = Path(str(f["--api-key-file"]))
    assert key_file == Path(os.environ["LLMPI_RUNTIME_DIR"]) / "api_keys"
    key = (Path(env["LLMPI_DATA_DIR"]) / "api_key").read_text().strip()
    assert key_file.read_text() == f"{key} name=default\n"  # the name usage, metrics and the access log say


def test_settings_become_flags(env: dict[str, str], tmp_path: Path) -> None:
    template = tmp_path / "t.jinja"
    template.write_text("{{ messages }}")
    env.update(
        LLMPI_THREADS="3",
        LLMPI_PARALLEL="2",
        LLMPI_CTX_SIZE="1024",
        LLMPI_PORT="9000",
        LLMPI_HOST="127.0.0.1",
        LLMPI_MODEL_ALIAS="my-model",
        LLMPI_METRICS="off",
        LLMPI_CHAT_TEMPLATE_FILE=str(template),
        LLMPI_API_KEY="sk-test-0123456789",
    )
    p = launcher.prepare(env, HW, out=io.StringIO()).plan
    f = flags(p.argv)
    assert (f["--threads"], f["--parallel"], f["--ctx-size"], f["--port"], f["--host"], f["--alias"]) == (
        "3",
        "2",
        "2048",  # 2 slots of 1024
        "9000",
        "127.0.0.1",
        "my-model",
    )
    assert f["--chat-template-file"] == str(template)
    assert "--metrics" not in f
    key_file = Path(str(f["--api-key-file"]))
    assert key_file.read_text() == "sk-test-0123456789 name=default\n"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert "sk-test-0123456789" not in " ".join(p.argv)  # never on the command line (ps shows it)
    assert "LLMPI_API_KEY" not in launcher.child_env(env)


def test_template_next_to_the_model_and_links(env: dict[str, str], tmp_path: Path) -> None:
    model = Path(env["LLMPI_MODEL"])
    model.with_name("tiny-chat.Q4_K_M.jinja").write_text("{{ messages }}")
    link = tmp_path / "default.gguf"
    link.symlink_to(model.name)
    env["LLMPI_MODEL"] = str(link)
    f = flags(launcher.prepare(env, HW, out=io.StringIO()).plan.argv)
    assert f["--alias"] == "tiny-chat.Q4_K_M"  # the real file's name, not the link's
    assert f["--chat-template-file"] == str(model.with_name("tiny-chat.Q4_K_M.jinja"))
    env["LLMPI_CHAT_TEMPLATE"] = "chatml"  # a configured template wins over the file next to the model
    f = flags(launcher.prepare(env, HW, out=io.StringIO()).plan.argv)
    assert f["--chat-template"] == "chatml" and "--chat-template-file" not in f


def test_llama_arg_variables_win(env: dict[str, str]) -> None:
    env.update(LLAMA_ARG_THREADS="7", LLAMA_ARG_CTX_SIZE="2048")
    p = launcher.prepare(env, HW, out=io.StringIO()).plan
    f = flags(p.argv)
    assert "--threads" not in f and "--ctx-size" not in f
    assert launcher.child_env(env)["LLAMA_ARG_THREADS"] == "7"
    assert any("LLAMA_ARG_THREADS='7' given" in n for n in p.notes)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("LLMPI_THREADS", "many", "not a whole number"),
        ("LLMPI_PARALLEL", "0", "too small"),
        ("LLMPI_CTX_SIZE", "100", "too small"),
        ("LLMPI_METRICS", "maybe", "use on or off"),
        ("LLMPI_LOG_LEVEL", "chatty", "use one of error, warn, info, trace, debug"),
        ("LLMPI_MEMORY_LIMIT", "lots", "not a size"),
        ("LLMPI_CHAT_TEMPLATE_FILE", "/nonexistent.jinja", "does not exist"),
    ],
)
def test_bad_settings_are_refused(env: dict[str, str], name: str, value: str, message: str) -> None:
    env[name] = value
    with pytest.raises(ConfigError, match=message):
        launcher.prepare(env, HW, out=io.StringIO())


def test_missing_and_truncated_models(env: dict[str, str], tmp_path: Path) -> None:
    env["LLMPI_MODEL"] = str(tmp_path / "nope.gguf")
    with pytest.raises(ConfigError, match="does not exist"):
        launcher.prepare(env, HW, out=io.StringIO())
    env["LLMPI_MODEL"] = str(llama_like(tmp_path / "cut.gguf", truncate=4096))
    with pytest.raises(ConfigError, match="truncated"):
        launcher.prepare(env, HW, out=io.StringIO())
    env["LLMPI_MODEL"] = ""
    with pytest.raises(ConfigError, match="LLMPI_MODEL is not set and this image has no embedded model"):
        launcher.prepare(env, HW, out=io.StringIO())


def test_model_too_big_is_refused_with_numbers(env: dict[str, str]) -> None:
    env["LLMPI_MEMORY_LIMIT"] = "260M"  # minus the 256 MiB reserve leaves 4 MiB; the runtime alone needs 8
    with pytest.raises(ConfigError) as e:
        launcher.prepare(env, HW, out=io.StringIO())
    assert "does not fit in memory" in str(e.value)
    assert "260 MiB LLMPI_MEMORY_LIMIT minus a reserve of 256 MiB" in str(e.value)
    # and no key was generated for a server that cannot start
    assert not (Path(env["LLMPI_DATA_DIR"]) / "api_key").exists()


def test_main_writes_marker_and_exits_78(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("LLMPI_MODEL", "/nonexistent/model.gguf")
    assert launcher.main([]) == 78
    assert "configuration error: the model file /nonexistent/model.gguf does not exist" in capsys.readouterr().err
    assert "does not exist" in Path(paths.runtime_file(paths.CONFIG_ERROR)).read_text()


# --- keys -----------------------------------------------------------------------------------------------------


def _keys(env: dict[str, str], data: Path, out: io.StringIO | None = None) -> keys.Auth:
    """What the launcher does with keys at start: read the settings, then apply them (files written)."""
    settings = Settings.read({**env, "LLMPI_DATA_DIR": str(data)})
    return keys.apply_keys(settings, out or io.StringIO())


def _server_keys() -> list[str]:
    """The keys of llama-server's key file (each line's first word; its name and share follow it)."""
    return [line.split()[0] for line in keys.server_keys_file().read_text().splitlines()]


def test_key_is_generated_once_stored_0600_and_reused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = _keys({}, data)
    assert first.generated and first.source == "generated"
    key = (data / "api_key").read_text().strip()
    assert key.startswith("sk-llmpi-") and len(key) > 40
    assert stat.S_IMODE((data / "api_key").stat().st_mode) == 0o600
    assert _server_keys() == [key] and stat.S_IMODE(keys.server_keys_file().stat().st_mode) == 0o600
    second = _keys({}, data)
    assert not second.generated and (data / "api_key").read_text().strip() == key


def test_the_generated_key_is_never_logged(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(os, "execvpe", lambda *a: None)
    launcher.main([])
    out = capsys.readouterr()
    key = (Path(env["LLMPI_DATA_DIR"]) / "api_key").read_text().strip()
    assert "a new API key was generated" in out.out and "llmpi keys show" in out.out
    assert key not in out.out + out.err


def test_empty_key_does_not_mean_no_auth(tmp_path: Path) -> None:
    auth = _keys({"LLMPI_API_KEY": "", "LLMPI_API_KEY_FILE": ""}, tmp_path)
    assert auth.enabled and auth.generated


def test_auth_off_is_explicit_and_loud(tmp_path: Path) -> None:
    out = io.StringIO()
    auth = _keys({"LLMPI_AUTH": "off"}, tmp_path, out)
    assert not auth.enabled
    assert "WARNING" in out.getvalue() and "open to anyone" in out.getvalue()
    with pytest.raises(ConfigError, match="remove one"):
        _keys({"LLMPI_AUTH": "off", "LLMPI_API_KEY": "sk-0123456789"}, tmp_path)


def test_stored_key_with_loose_mode_is_tightened(tmp_path: Path) -> None:
    (tmp_path / "api_key").write_text("sk-llmpi-existing-key\n")
    os.chmod(tmp_path / "api_key", 0o644)
    out = io.StringIO()
    auth = _keys({}, tmp_path, out)
    assert not auth.generated
    assert stat.S_IMODE((tmp_path / "api_key").stat().st_mode) == 0o600
    assert "mode is now 0600" in out.getvalue()


def test_hand_edited_key_files_reach_the_server_one_key_a_line(tmp_path: Path) -> None:
    """Commas, CRLF, comments and blank lines in a key file: the server's file has one clean key a line."""
    (tmp_path / "api_key").write_bytes(b"# mine\r\nsk-first-key-123, sk-second-key-456\r\n\r\n")
    _keys({}, tmp_path)
    assert _server_keys() == ["sk-first-key-123", "sk-second-key-456"]
    (tmp_path / "api_key").write_bytes(b"\xff\xfe garbage")
    with pytest.raises(ConfigError, match="is damaged"):
        _keys({}, tmp_path)


def test_key_file_variants(tmp_path: Path) -> None:
    f = tmp_path / "secret"
    f.write_text("# my keys\nsk-first-key-123\nsk-second-key-456\n")
    auth = _keys({"LLMPI_API_KEY_FILE": str(f)}, tmp_path / "data")
    assert auth.source == "LLMPI_API_KEY_FILE"
    assert keys.server_keys_file().read_text() == "sk-first-key-123 name=default\nsk-second-key-456 name=default-2\n"
    assert not (tmp_path / "data" / "api_key").exists()
    with pytest.raises(ConfigError, match="both LLMPI_API_KEY and LLMPI_API_KEY_FILE"):
        file_env({"LLMPI_API_KEY": "a", "LLMPI_API_KEY_FILE": str(f)}, "LLMPI_API_KEY")
    with pytest.raises(ConfigError, match="cannot read it"):
        file_env({"LLMPI_API_KEY_FILE": str(tmp_path / "missing")}, "LLMPI_API_KEY")


@pytest.mark.parametrize(
    ("value", "message"), [("short", "too easy to guess"), ("has space", "mangle"), ("#only a comment", "holds no key")]
)
def test_bad_keys_are_refused(tmp_path: Path, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _keys({"LLMPI_API_KEY": value}, tmp_path)


def test_unwritable_data_dir(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "data"
    not_a_dir.write_text("a file where the volume should be")  # fails for root too, unlike a chmod
    with pytest.raises(ConfigError, match=r"cannot be stored in .*set LLMPI_API_KEY"):
        _keys({}, not_a_dir)


def test_named_keys_add_show_revoke(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LLMPI_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("LLMPI_API_KEY", "sk-configured-key-1")
    _keys({"LLMPI_API_KEY": "sk-configured-key-1"}, tmp_path)
    assert cli.main(["keys", "add", "phone"]) == 0
    phone = capsys.readouterr().out.strip()
    assert phone.startswith("sk-llmpi-") and _server_keys() == ["sk-configured-key-1", phone]
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o600
    assert cli.main(["keys", "add", "phone"]) == 2 and "exists already" in capsys.readouterr().err
    assert cli.main(["keys", "add", "bad name!"]) == 2 and "not a key name" in capsys.readouterr().err
    assert cli.main(["keys", "show", "phone"]) == 0 and capsys.readouterr().out.strip() == phone
    assert cli.main(["keys", "list"]) == 0
    listing = capsys.readouterr().out
    assert "phone" in listing and phone not in listing  # shortened
    assert cli.main(["keys", "show"]) == 2 and "set by you" in capsys.readouterr().err
    assert cli.main(["keys", "revoke", "phone"]) == 0
    assert _server_keys() == ["sk-configured-key-1"]
    assert cli.main(["keys", "revoke", "phone"]) == 2
    # the launcher at the next start keeps named keys and refuses a damaged line with its number
    (tmp_path / "keys").write_text("tv sk-tv-key-0123\nlaptop\n")
    with pytest.raises(ConfigError, match="keys line 2"):
        _keys({"LLMPI_API_KEY": "sk-configured-key-1"}, tmp_path)


# --- hardware ---------------------------------------------------------------------------------------------------


def _fake_root(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return tmp_path


def test_cgroup_v2_limits(tmp_path: Path) -> None:
    root = _fake_root(
        tmp_path,
        {
            "proc/meminfo": "MemTotal:       16000000 kB\nMemFree: 1 kB\n",
            "sys/fs/cgroup/memory.max": str(4 * units.GiB),
            "sys/fs/cgroup/cpu.max": "150000 100000",
        },
    )
    assert hardware.cgroup_memory_limit(root) == 4 * units.GiB
    assert hardware.cgroup_cpu_quota(root) == 1.5


def test_cgroup_v1_unlimited_and_meminfo(tmp_path: Path) -> None:
    root = _fake_root(
        tmp_path,
        {
            "proc/meminfo": "MemTotal:        8000000 kB\n",
            "sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712",
            "sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1",
            "sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000",
        },
    )
    assert hardware.cgroup_memory_limit(root) is None
    assert hardware.cgroup_cpu_quota(root) is None
    assert hardware.meminfo_total(root) == 8000000 * 1024


def test_physical_cores_count_smt_siblings_once(tmp_path: Path) -> None:
    files = {}
    for cpu, core in enumerate([0, 1, 0, 1]):  # 2 cores x 2 threads
        files[f"sys/devices/system/cpu/cpu{cpu}/topology/core_id"] = str(core)
        files[f"sys/devices/system/cpu/cpu{cpu}/topology/physical_package_id"] = "0"
    root = _fake_root(tmp_path, files)
    assert hardware.physical_cores({0, 1, 2, 3}, root) == 2
    assert hardware.physical_cores({0, 2}, root) == 1


def test_detect_on_this_machine() -> None:
    hw = hardware.detect()
    assert 1 <= hw.physical_cores <= hw.cpus
    assert hw.memory.total > 256 * units.MiB


# --- FATAL listener -------------------------------------------------------------------------------------------


def test_listener_keeps_last_words_and_never_stops_supervisord() -> None:
    log = io.StringIO()
    listener = fatal_listener.Listener(log)
    lines = "".join(f"main: line {i}\n" for i in range(30))
    listener.handle("PROCESS_LOG_STDERR", "processname:llama-server channel:stderr len:9\n" + lines)
    listener.handle(
        "PROCESS_LOG_STDERR",
        "processname:llama-server len:9\nllama_model_load: error loading model: unknown model architecture: 'x'\n"
        "main: exiting due to model loading error\n",
    )
    assert len(listener.lines) == fatal_listener.KEEP_LINES
    listener.handle("PROCESS_STATE_EXITED", "processname:llama-server from_state:RUNNING expected:0 pid:7")
    words = Path(paths.runtime_file(paths.LAST_WORDS)).read_text()
    assert "unknown model architecture" in words and "line 3" not in words  # the error lines, not the chatter
    listener.handle("PROCESS_STATE_FATAL", "processname:llama-server groupname:llama-server from_state:BACKOFF")
    assert "will not be started again" in log.getvalue() and "unknown model architecture" in log.getvalue()
    Path(paths.runtime_file(paths.CONFIG_ERROR)).write_text("the model file /x does not exist\n")
    listener.handle("PROCESS_STATE_FATAL", "processname:llama-server groupname:llama-server from_state:BACKOFF")
    assert "until the problem is fixed: the model file /x does not exist" in log.getvalue()
    listener.handle("PROCESS_STATE_STARTING", "processname:llama-server from_state:BACKOFF tries:1")
    assert listener.last_words() == ""  # each start has its own last words


def test_repeated_start_failures_become_a_refusal(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    execs: list[str] = []
    monkeypatch.setattr(os, "execvpe", lambda *a: execs.append(a[0]))
    Path(paths.make_runtime_dir())
    Path(paths.runtime_file(paths.LAST_WORDS)).write_text("error loading model: unknown model architecture: 'x'\n")
    for _ in range(failure.MAX_START_ATTEMPTS):
        assert launcher.main([]) == 0  # exec'd (here: recorded)
    assert len(execs) == failure.MAX_START_ATTEMPTS
    assert launcher.main([]) == 78
    reason = Path(paths.runtime_file(paths.CONFIG_ERROR)).read_text()
    assert "stopped 3 times before it could serve" in reason and "unknown model architecture" in reason
    # a refusal is final in this container: supervisord's next try refuses at once, nothing is redone
    assert launcher.main([]) == 78 and len(execs) == failure.MAX_START_ATTEMPTS
    # a restarted container starts afresh; the health check saw it serve: a later crash gets its attempts again
    paths.clear_state()
    for _ in range(failure.MAX_START_ATTEMPTS - 1):
        assert launcher.main([]) == 0
    Path(paths.runtime_file(paths.START_ATTEMPTS)).unlink()
    assert (
        launcher.main([]) == 0 and launcher.main([]) == 0 and not Path(paths.runtime_file(paths.CONFIG_ERROR)).exists()
    )
    paths.clear_state()
    # the launcher's own refusals (a wrong setting) are not failed starts of llama-server
    monkeypatch.setenv("LLMPI_PARALLEL", "many")
    for _ in range(failure.MAX_START_ATTEMPTS + 2):
        assert launcher.main([]) == 78
    assert "LLMPI_PARALLEL='many'" in Path(paths.runtime_file(paths.CONFIG_ERROR)).read_text()


def test_unexpected_launcher_errors_are_refusals_too(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)

    def unreadable() -> hardware.Hardware:
        raise PermissionError(13, "Permission denied", "/sys/fs/cgroup/memory.max")

    monkeypatch.setattr(hardware, "detect", unreadable)  # not a ConfigError: a bug or a strange host
    assert launcher.main([]) == 78
    assert "the launcher failed: PermissionError" in Path(paths.runtime_file(paths.CONFIG_ERROR)).read_text()
    assert "Traceback" in capsys.readouterr().err


def test_listener_speaks_the_protocol() -> None:
    payload = "processname:llama-server groupname:llama-server from_state:STARTING"
    stdin = io.StringIO(
        f"ver:3.0 server:supervisor serial:1 pool:fatal eventname:PROCESS_STATE_RUNNING len:{len(payload)}\n{payload}"
    )
    stdout = io.StringIO()
    assert fatal_listener.main(stdin=stdin, stdout=stdout, log=io.StringIO()) == 0
    assert stdout.getvalue() == "READY\nRESULT 2\nOKREADY\n"


def test_manifest_next_to_the_model_adds_projector_and_embeddings(env: dict[str, str], tmp_path: Path) -> None:
    model = Path(env["LLMPI_MODEL"])
    projector = llama_like(tmp_path / "tiny-chat.Q4_K_M.mmproj.gguf")
    model.with_suffix(".json").write_text(json.dumps({"kind": "embedding", "mmproj": {"file": projector.name}}))
    f = flags(launcher.prepare(env, HW, out=io.StringIO()).plan.argv)
    assert f["--mmproj"] == str(projector)
    assert "--embeddings" in f
    env["LLMPI_EMBEDDINGS"] = "off"
    assert "--embeddings" not in flags(launcher.prepare(env, HW, out=io.StringIO()).plan.argv)
    projector.write_bytes(projector.read_bytes()[:-100])
    with pytest.raises(ConfigError, match=r"cannot use the vision projector: .* is truncated"):
        launcher.prepare(env, HW, out=io.StringIO())
    env["LLMPI_MMPROJ"] = str(tmp_path / "nope.gguf")
    with pytest.raises(ConfigError, match=r"vision projector .*nope.gguf does not exist \(LLMPI_MMPROJ\)"):
        launcher.prepare(env, HW, out=io.StringIO())


def test_image_limits_with_a_projector(env: dict[str, str], tmp_path: Path) -> None:
    f = flags(launcher.prepare(env, HW, out=io.StringIO()).plan.argv)
    assert "--image-max-tokens" not in f and "--image-max-pixels" not in f  # a text-only model: nothing to limit
    env["LLMPI_MMPROJ"] = str(llama_like(tmp_path / "projector.gguf"))
    f = flags(launcher.prepare(env, HW, out=io.StringIO()).plan.argv)
    assert f["--image-max-tokens"] == "256" and "--image-min-tokens" not in f
    assert f["--image-max-pixels"] == "50000000"
    assert f["--media-max-bytes"] == str(20 * 1024 * 1024)
    env.update(LLMPI_IMAGE_MAX_TOKENS="1024", LLMPI_IMAGE_MIN_TOKENS="64", LLMPI_MEDIA_MAX_BYTES="5M")
    env["LLAMA_ARG_IMAGE_MAX_PIXELS"] = "1000"
    f = flags(launcher.prepare(env, HW, out=io.StringIO()).plan.argv)
    assert (f["--image-max-tokens"], f["--image-min-tokens"]) == ("1024", "64")
    assert f["--media-max-bytes"] == str(5 * 1024 * 1024)
    assert "--image-max-pixels" not in f  # the LLAMA_ARG_* variable wins


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("LLMPI_IMAGE_MIN_TOKENS", "512", "more than LLMPI_IMAGE_MAX_TOKENS=256"),
        ("LLMPI_IMAGE_MAX_TOKENS", "0", "too small"),
        ("LLMPI_IMAGE_MAX_PIXELS", "3000000000", "out of range"),
        ("LLMPI_MEDIA_MAX_BYTES", "4G", "out of range"),
        ("LLMPI_MEDIA_MAX_BYTES", "big", "not a size"),
    ],
)
def test_bad_image_limits_are_refused(env: dict[str, str], tmp_path: Path, name: str, value: str, message: str) -> None:
    env["LLMPI_MMPROJ"] = str(llama_like(tmp_path / "projector.gguf"))
    env[name] = value
    with pytest.raises(ConfigError, match=message):
        launcher.prepare(env, HW, out=io.StringIO())


def test_embedding_model_beside_the_chat_model_is_router_mode(env: dict[str, str], tmp_path: Path) -> None:
    env["LLMPI_EMBEDDING_MODEL"] = str(llama_like(tmp_path / "minilm.F16.gguf", n_ctx_train=512))
    p = launcher.prepare(env, HW, out=io.StringIO()).plan
    f = flags(p.argv)
    assert "--model" not in f and "--ctx-size" not in f  # model settings go to the preset, not the router
    assert f["--models-max"] == "2" and f["--port"] == "8080" and "--api-key-file" in f
    preset = Path(str(f["--models-preset"])).read_text()
    sections = dict(
        (block.splitlines()[0].strip("[]"), dict(line.split(" = ") for line in block.splitlines()[1:]))
        for block in preset.split("\n\n")[1:]
    )
    chat, emb = sections["tiny-chat.Q4_K_M"], sections["minilm.F16"]
    assert chat["model"] == env["LLMPI_MODEL"] and chat["no-kv-unified"] == "true" and chat["parallel"] == "8"
    assert emb["embeddings"] == "true" and emb["no-kv-unified"] == "true"
    assert (emb["ctx-size"], emb["parallel"], emb["ubatch-size"]) == ("1024", "2", "512")  # 2 slots of 512
    assert chat["load-on-startup"] == emb["load-on-startup"] == "true"
    health = json.loads((Path(os.environ["LLMPI_RUNTIME_DIR"]) / "health.json").read_text())
    assert health["models"] == ["tiny-chat.Q4_K_M", "minilm.F16"]
    env["LLMPI_EMBEDDING_ALIAS"] = "tiny-chat.Q4_K_M"
    with pytest.raises(ConfigError, match="both called"):
        launcher.prepare(env, HW, out=io.StringIO())


def test_fit_check_counts_both_models(env: dict[str, str], tmp_path: Path) -> None:
    env["LLMPI_MEMORY_LIMIT"] = "600M"  # 344 MiB usable: the chat model alone fits
    launcher.prepare(env, HW, out=io.StringIO())
    big = llama_like(tmp_path / "big-embedder.gguf", n_layer=8, n_embd=1024, n_ctx_train=8192)
    env["LLMPI_EMBEDDING_MODEL"] = str(big)
    with pytest.raises(ConfigError) as e:
        launcher.prepare(env, HW, out=io.StringIO())
    assert "does not fit in memory" in str(e.value) and "the embedding model and the router take" in str(e.value)
    env["LLMPI_EMBEDDING_MODEL"] = str(tmp_path / "nope.gguf")
    with pytest.raises(ConfigError, match=r"LLMPI_EMBEDDING_MODEL: the model file .*nope\.gguf does not exist"):
        launcher.prepare(env, HW, out=io.StringIO())


def test_pkg_resources_stand_in(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os.path
    import sys

    from llmpi.process import supervisord

    stand_in = supervisord._PkgResources("pkg_resources")
    # what supervisor does with it: an event listener's default result handler, a "module:attr" spec
    assert stand_in.EntryPoint.parse("x=os.path:join").resolve() is os.path.join
    assert stand_in.EntryPoint.parse("x=os:path.join").resolve() is os.path.join
    with pytest.raises(ValueError):
        stand_in.EntryPoint.parse("x=")
    # any other use imports the real module
    (tmp_path / "pkg_resources.py").write_text("def working_set():\n    return []\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, "pkg_resources", stand_in)
    assert callable(stand_in.working_set)
    assert sys.modules["pkg_resources"] is not stand_in


def test_supervisord_first_poll_does_not_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    from llmpi.process import supervisord

    waited: list[float] = []

    class Poller:
        def poll(self, timeout: float) -> tuple[list[int], list[int]]:
            waited.append(timeout)
            return [], []

    fake = types.ModuleType("supervisor.poller")
    fake.Poller = Poller  # type: ignore[attr-defined]
    package = types.ModuleType("supervisor")
    package.poller = fake  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "supervisor", package)
    monkeypatch.setitem(sys.modules, "supervisor.poller", fake)
    supervisord.start_without_waiting()
    p = Poller()
    p.poll(1)
    p.poll(1)
    p.poll(1)
    assert waited == [0, 1, 1]  # only the first poll, before anything can have happened, skips the wait


def test_trained_context_from_llama_arg_is_fitted_too(env: dict[str, str]) -> None:
    """LLAMA_ARG_CTX_SIZE=0 asks llama-server for the model's trained context: the fit covers that pool."""
    env["LLAMA_ARG_CTX_SIZE"] = "0"
    p = launcher.prepare(env, HW, out=io.StringIO()).plan
    f = flags(p.argv)
    assert "--ctx-size" not in f and f["--parallel"] == "8"  # 8 slots of 4096 / 8
    env["LLMPI_MEMORY_LIMIT"] = "262M"  # 6 MiB usable: the trained pool does not fit
    with pytest.raises(ConfigError, match=r"LLAMA_ARG_CTX_SIZE=0"):
        launcher.prepare(env, HW, out=io.StringIO())


def test_slots_halve_before_contexts_get_short(env: dict[str, str], tmp_path: Path) -> None:
    big = llama_like(tmp_path / "wide.gguf", n_layer=16, n_embd=1024, n_ctx_train=8192)
    env.update(LLMPI_MODEL=str(big), LLMPI_MEMORY_LIMIT="600M", LLMPI_PROMPT_CACHE="0")
    f = flags(launcher.prepare(env, HW, out=io.StringIO()).plan.argv)
    slots = int(str(f["--parallel"]))
    per_slot = int(str(f["--ctx-size"])) // slots
    assert per_slot >= fit.SLOT_CONTEXT_FLOOR and slots < 8 and f["--ctx-size"] == str(slots * per_slot)
    env["LLMPI_PARALLEL"] = "8"  # asked for: the context shrinks instead
    f = flags(launcher.prepare(env, HW, out=io.StringIO()).plan.argv)
    assert f["--parallel"] == "8" and int(str(f["--ctx-size"])) // 8 < fit.SLOT_CONTEXT_FLOOR


def test_prompt_cache_is_counted_in_the_fit(env: dict[str, str]) -> None:
    env.update(LLMPI_MEMORY_LIMIT="300M", LLMPI_PROMPT_CACHE="1G")
    with pytest.raises(ConfigError, match=r"prompt cache of 1.00 GiB"):
        launcher.prepare(env, HW, out=io.StringIO())
    env["LLMPI_PROMPT_CACHE"] = "0"
    assert flags(launcher.prepare(env, HW, out=io.StringIO()).plan.argv)["--cache-ram"] == "0"


def test_every_model_in_the_models_directory_is_served_by_name(env: dict[str, str], tmp_path: Path) -> None:
    models = tmp_path / "data" / "models"
    pulled(models, "other-chat")
    pulled(models, "embedder", kind="embedding", n_ctx_train=512)
    p = launcher.prepare(env, HW, out=io.StringIO()).plan
    f = flags(p.argv)
    assert f["--models-default"] == "tiny-chat.Q4_K_M" and "--admin-key-file" in f
    top, sections = preset_sections(Path(str(f["--models-preset"])).read_text())
    assert set(sections) == {"tiny-chat.Q4_K_M", "other-chat", "embedder"}
    assert top["models-max"] == f["--models-max"] == "3"  # 8 GiB: all three fit at once
    assert sections["tiny-chat.Q4_K_M"]["load-on-startup"] == "true"  # the default; the others on first request
    assert sections["other-chat"]["load-on-startup"] == sections["embedder"]["load-on-startup"] == "false"
    assert (sections["other-chat"]["tags"], sections["embedder"]["tags"]) == ("chat", "embedding")
    assert sections["embedder"]["embeddings"] == "true"
    health = json.loads((Path(os.environ["LLMPI_RUNTIME_DIR"]) / "health.json").read_text())
    assert health["models"] == ["tiny-chat.Q4_K_M"]
    assert keys.internal_admin_key() is not None  # for `llmpi models` inside the container


def test_models_max_is_how_many_of_the_largest_fit_together(env: dict[str, str], tmp_path: Path) -> None:
    models = tmp_path / "data" / "models"
    pulled(models, "big-a", n_layer=9, n_embd=2048)
    pulled(models, "big-b", n_layer=9, n_embd=2048)
    pulled(
        models, "huge", n_layer=8, n_embd=4096
    )  # 8 x 4096 x 4096 x 4 bytes: 512 MiB, more than 600M less the reserve
    env["LLMPI_MEMORY_LIMIT"] = "600M"
    env["LLMPI_PARALLEL"] = "1"
    env["LLMPI_CTX_SIZE"] = "2048"
    p = serving.plan(Settings.read(env), HW)
    f = flags(p.argv)
    top, sections = preset_sections(next(t for path, t in p.files.items() if path.name == "models.ini"))
    assert "huge" not in sections and any("not serving huge" in n for n in p.notes)
    assert set(sections) == {"tiny-chat.Q4_K_M", "big-a", "big-b"}
    limit = int(top["models-max"])
    # the two largest (about 260 MiB each) do not fit together in 344 MiB, so only one model at a time is certain to
    # fit: the router unloads the one used least recently before it loads another
    assert limit == 1 and f["--models-max"] == "1"
    (models / "huge.Q4_K_M.json").unlink()  # without its manifest, a model file is not served
    env["LLMPI_MEMORY_LIMIT"] = "3G"  # each with its prompt cache: 1 slot, room for 7 more conversations
    top, _ = preset_sections(
        next(t for path, t in serving.plan(Settings.read(env), HW).files.items() if path.name == "models.ini")
    )
    assert top["models-max"] == "3"


def test_a_named_model_on_the_board_is_served_without_the_hub(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: the hub is never asked
    models = tmp_path / "data" / "models"
    model = pulled(models, "qwen3-4b-instruct")
    env["LLMPI_MODEL"] = "qwen3-4b-instruct"
    f = flags(launcher.prepare(env, HW, out=io.StringIO()).plan.argv)
    assert (f["--model"], f["--alias"]) == (str(model), "qwen3-4b-instruct")  # one model: no router
    env["LLMPI_MODEL"] = "qwen3-4b-instruct:Q8_0"  # not on the board, and the hub cannot be reached
    with pytest.raises(ConfigError, match=r"cannot reach the hub(.|\n)*docker compose cp"):
        launcher.prepare(env, HW, out=io.StringIO())
    env["LLMPI_MODEL"] = "qwen3-4b-instrukt"
    with pytest.raises(ConfigError, match="did you mean qwen3-4b-instruct"):
        launcher.prepare(env, HW, out=io.StringIO())


def test_an_amx_cpu_counts_the_amx_backends_work_memory(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "cpuinfo").write_text(
        "processor\t: 0\nflags\t\t: fpu sse avx512f amx_bf16 amx_tile amx_int8\n"
    )
    assert hardware.has_amx(tmp_path) and not hardware.has_amx(tmp_path / "nothing")
    amx = hardware.Hardware(cpus=8, physical_cores=4, memory=HW.memory, amx=True)
    plain, with_amx = serving.plan(Settings.read(env), HW), serving.plan(Settings.read(env), amx)
    assert "AMX work buffers 256 MiB" in with_amx.notes[0] and "AMX" not in plain.notes[0]


def test_a_pull_plans_with_what_the_launcher_will_count(env: dict[str, str]) -> None:
    amx = hardware.Hardware(cpus=8, physical_cores=4, memory=HW.memory, amx=True)
    s = Settings.read(env)
    assert resolve.pull_budget(s, amx)[0] == resolve.pull_budget(s, HW)[0] - fit.AMX_WORK
