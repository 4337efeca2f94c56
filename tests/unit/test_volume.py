"""The data volume's format (llmpi.volume.layout) and `llmpi backup` / `llmpi restore` (llmpi.volume.backup) on
directories standing in for the two volumes: a new volume is stamped, an old one migrated, a newer one refused;
a backup restores into empty volumes whole, and a bad archive changes nothing."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from llmpi.core import keys
from llmpi.core.env import ConfigError
from llmpi.volume import backup, layout

pytestmark = pytest.mark.unit

KEY = "sk-llmpi-" + "a" * 43
PHONE = "sk-llmpi-" + "b" * 43
SECRET = "c" * 43


def release_volume(root: Path) -> tuple[Path, Path]:
    """A volume as llmpi 0.1.0 left it (no format.json): keys, named keys, a cluster secret, a CA, one model."""
    data, models = root / "data", root / "data" / "models"
    (data / "tls").mkdir(parents=True)
    models.mkdir()
    (data / "api_key").write_text(KEY + "\n")
    (data / "keys").write_text(f"# named\nphone {PHONE} slots=1 priority=high\n")
    (data / "cluster.key").write_text(SECRET + "\n")
    (data / "tls" / "ca.crt").write_text("CA\n")
    (data / "tls" / "ca.key").write_text("CA KEY\n")
    (data / "usage.json").write_text("{}\n")
    (models / "tiny.Q4_K_M.gguf").write_bytes(b"GGUF" + bytes(100))
    manifest = {"name": "tiny", "file": "tiny.Q4_K_M.gguf", "source": {"pulled": "test/Tiny-GGUF"}}
    (models / "tiny.Q4_K_M.json").write_text(json.dumps(manifest))
    for name in ("api_key", "keys", "cluster.key"):
        (data / name).chmod(0o600)
    return data, models


def made_backup(data: Path, models: Path, with_models: bool, env: dict[str, str] | None = None) -> bytes:
    out = io.BytesIO()
    backup.write_backup(data, models, env or {}, out, with_models)
    return out.getvalue()


def tar_of(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- the format -------------------------------------------------------------------------------------------------


def test_a_new_volume_gets_this_format(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()  # the models volume's mount point: no content of its own
    out = io.StringIO()
    layout.prepare_volume(tmp_path, out)
    assert json.loads((tmp_path / "format.json").read_text())["format"] == layout.FORMAT
    assert "a new data volume" in out.getvalue()


def test_a_volume_of_0_1_0_is_migrated_and_keeps_every_file(tmp_path: Path) -> None:
    data, _ = release_volume(tmp_path)
    before = snapshot(data)
    assert layout.read_format(data) == 0
    out = io.StringIO()
    layout.prepare_volume(data, out)
    assert layout.read_format(data) == layout.FORMAT
    assert "data volume format 0 -> 1" in out.getvalue()
    after = snapshot(data)
    assert after.pop("format.json")
    assert after == before
    again = io.StringIO()
    layout.prepare_volume(data, again)  # the next start: nothing to do
    assert again.getvalue() == ""


def test_a_volume_of_a_newer_llmpi_is_refused_untouched(tmp_path: Path) -> None:
    data, _ = release_volume(tmp_path)
    (data / "format.json").write_text(json.dumps({"format": layout.FORMAT + 1, "llmpi": "9.0.0"}))
    before = snapshot(data)
    with pytest.raises(ConfigError, match=r"newer llmpi \(volume format 2; .* reads formats up to 1\)"):
        layout.prepare_volume(data, io.StringIO())
    assert snapshot(data) == before


@pytest.mark.parametrize("text", ["not json", '{"format": "1"}', '{"format": -1}', "[]"])
def test_a_damaged_format_file_is_named(tmp_path: Path, text: str) -> None:
    (tmp_path / "format.json").write_text(text)
    with pytest.raises(ConfigError, match=r"format\.json"):
        layout.prepare_volume(tmp_path, io.StringIO())


def test_each_migration_steps_one_format_up_to_this_one() -> None:
    assert [m.to for m in layout.MIGRATIONS] == list(range(1, layout.FORMAT + 1))
    assert [m.to for m in layout.steps_from(0)] == list(range(1, layout.FORMAT + 1))
    assert layout.steps_from(layout.FORMAT) == []


# --- backup and restore -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_models", [True, False])
def test_backup_then_restore_into_empty_volumes(tmp_path: Path, with_models: bool) -> None:
    data, models = release_volume(tmp_path / "old")
    layout.prepare_volume(data, io.StringIO())
    env = {"LLMPI_MODEL": "qwen3-4b-instruct", "LLMPI_API_KEY": "sk-never-in-a-backup", "OTHER": "x"}
    archive = made_backup(data, models, with_models, env)
    assert b"sk-never-in-a-backup" not in archive

    new_data, new_models = tmp_path / "new", tmp_path / "new" / "models"
    restored = backup.restore_backup(new_data, new_models, io.BytesIO(archive))
    assert keys.read_named(new_data) == keys.read_named(data)
    for name in ("api_key", "cluster.key", "tls/ca.crt", "tls/ca.key", "format.json"):
        assert (new_data / name).read_bytes() == (data / name).read_bytes(), name
    for name in ("api_key", "keys", "cluster.key", "tls/ca.key"):
        assert (new_data / name).stat().st_mode & 0o777 == 0o600, name
    assert not (new_data / "usage.json").exists()  # the ledger is the running server's (README: backup)
    assert (new_models / "tiny.Q4_K_M.json").is_file()
    assert restored.settings == {"LLMPI_MODEL": "qwen3-4b-instruct"}
    if with_models:
        assert (new_models / "tiny.Q4_K_M.gguf").read_bytes() == (models / "tiny.Q4_K_M.gguf").read_bytes()
        assert restored.models == ["tiny.Q4_K_M"] and restored.to_pull == []
    else:
        assert not (new_models / "tiny.Q4_K_M.gguf").exists()
        assert restored.to_pull == ["test/Tiny-GGUF (llmpi models pull test/Tiny-GGUF)"]
    assert not [p for p in tmp_path.rglob(".restore-*")], "the staging directories are removed"


def good_members(tmp_path: Path) -> dict[str, bytes]:
    data, models = release_volume(tmp_path / "src")
    layout.prepare_volume(data, io.StringIO())
    with tarfile.open(fileobj=io.BytesIO(made_backup(data, models, True)), mode="r") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isreg()}  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (lambda m: {**m, "data/../../etc/passwd": b"x"}, "not part of an llmpi backup"),
        (lambda m: {**m, "data/logs/access.log": b"x"}, "not part of an llmpi backup"),
        (lambda m: {"./api_key": m["data/api_key"]}, "a copy of a data volume"),
        (lambda m: {k: v for k, v in m.items() if k != "backup.json"}, "does not end with backup.end"),
        (lambda m: {k: v for k, v in m.items() if k != "backup.end"}, "cut off"),
        (lambda m: {**m, "backup.json": json.dumps({"format": 7}).encode()}, "newer llmpi"),
        (lambda m: {**m, "data/keys": b"phone short\n"}, "too easy to guess"),
        (lambda m: {**m, "data/api_key": b"\n"}, "holds no key"),
        (lambda m: {**m, "data/cluster.key": b"short\n"}, "cluster.key is 5 characters long"),
    ],
)
def test_a_bad_archive_changes_nothing(tmp_path: Path, change: object, error: str) -> None:
    members = change(good_members(tmp_path))  # type: ignore[operator]
    data, models = release_volume(tmp_path / "board")
    before = snapshot(data)
    with pytest.raises(ConfigError, match=error):
        backup.restore_backup(data, models, io.BytesIO(tar_of(members)))
    assert snapshot(data) == before


def test_a_cut_off_or_linking_archive_changes_nothing(tmp_path: Path) -> None:
    data, models = release_volume(tmp_path / "board")
    before = snapshot(data)
    whole = tar_of(good_members(tmp_path))
    for cut in (len(whole) // 2, 2048, 512 * 3):  # inside the model file, inside a header, at a member's end
        with pytest.raises(ConfigError, match=r"cut off|not a whole tar stream"):
            backup.restore_backup(data, models, io.BytesIO(whole[:cut]))
    link = io.BytesIO()
    with tarfile.open(fileobj=link, mode="w") as tar:
        info = tarfile.TarInfo("data/keys")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/shadow"
        tar.addfile(info)
    with pytest.raises(ConfigError, match="not a plain file"):
        backup.restore_backup(data, models, io.BytesIO(link.getvalue()))
    assert snapshot(data) == before


def test_an_archive_of_an_older_format_is_migrated(tmp_path: Path) -> None:
    members = good_members(tmp_path)
    members["backup.json"] = json.dumps({"format": 0, "llmpi": "0.1.0"}).encode()
    del members["data/format.json"]
    members["backup.end"] = f"{len(members) - 1}\n".encode()
    data, models = tmp_path / "new", tmp_path / "new" / "models"
    restored = backup.restore_backup(data, models, io.BytesIO(tar_of(members)))
    assert layout.read_format(data) == layout.FORMAT
    assert restored.migrated and "format 0 -> 1" in restored.migrated[0]


def test_a_restore_stopped_half_way_is_cleared_at_the_next_start(tmp_path: Path) -> None:
    data, models = release_volume(tmp_path)
    (data / ".restore-abc").mkdir()
    (data / ".restore-abc" / "keys").write_text("half\n")
    (models / ".restore-def").mkdir()
    assert sorted(p.name for p in backup.remove_unfinished_restores(data, models)) == [".restore-abc", ".restore-def"]
    assert not list(data.glob(".restore-*")) and not list(models.glob(".restore-*"))
    assert keys.read_named(data)["phone"][0] == PHONE
