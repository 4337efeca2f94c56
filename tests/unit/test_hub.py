"""One hub client (llmpi.models.hub) for the appliance's pull and llmpi-prepare, against the local hub stand-in: one
file picker, one error mapping, one resumable transfer, one token, and llmpi-prepare's ready GGUF files going
through the pull (sha256-checked, verified before they are moved into place, the pull's manifest)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from llmpi.core import units
from llmpi.core.settings import hub_token
from llmpi.models import catalog, choose, pull
from llmpi.models import hub as hub_client
from llmpi_prepare import cli, convert, pipeline
from llmpi_prepare import hub as prepare_hub
from tests.ggufmaker import llama_like
from tests.hubstub import Hub, Repo

pytestmark = pytest.mark.unit

TINY = catalog.Entry(name="tiny", kind="chat", gguf_repo="test/Tiny-GGUF", description="d", why="w", boards="any")


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch) -> Iterator[Hub]:
    with Hub() as h:
        monkeypatch.setenv("HF_ENDPOINT", h.url)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.delenv("HF_TOKEN_FILE", raising=False)
        yield h


@pytest.fixture
def tiny_gguf(tmp_path: Path) -> bytes:
    return llama_like(tmp_path / "tiny.gguf").read_bytes()


def test_the_picker_takes_a_quant_only_as_a_word_of_its_own(
    stub: Hub, tiny_gguf: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`F16` is not `BF16` and `Q4_0` is not `Q4_0_4_4`, for the appliance's pull and for llmpi-prepare's ready GGUF
    files alike (llmpi-prepare's own picker once took tiny-BF16.gguf for F16)."""
    files = {"tiny-BF16.gguf": tiny_gguf, "tiny-Q4_0_4_4.gguf": tiny_gguf, "tiny-Q4_K_M.gguf": tiny_gguf}
    stub.repos["test/Tiny-GGUF"] = Repo(files)
    ref = choose.entry_ref(TINY)
    remote = hub_client.inspect(ref.repo, ref.revision, None)
    assert choose.quant_files(ref, remote) == {"Q4_K_M": "tiny-Q4_K_M.gguf"}
    with pytest.raises(choose.PullError, match="F16 is not available"):
        pipeline.plan_ready(TINY, "F16", 8 * units.GiB, "test", None)
    (tmp_path / "catalog.toml").write_text(
        '[models."tiny"]\nkind = "chat"\ngguf_repo = "test/Tiny-GGUF"\ndescription = "d"\nwhy = "w"\nboards = "any"\n'
    )
    monkeypatch.setenv("LLMPI_CATALOG", str(tmp_path / "catalog.toml"))
    assert cli.main(["plan", "tiny", "--ram", "8G", "--quant", "F16"]) == 1
    assert "F16 is not available" in capsys.readouterr().err
    assert cli.main(["plan", "tiny", "--ram", "8G"]) == 0
    table = capsys.readouterr().out
    assert "Q4_K_M" in table and "Q4_0 " not in table and "F16" not in table


def test_run_prebuilt_refuses_a_file_whose_sha256_is_not_the_hub_s(
    stub: Hub, tiny_gguf: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub.repos["test/Tiny-GGUF"] = Repo({"tiny-Q4_K_M.gguf": tiny_gguf}, listed_sha256={"tiny-Q4_K_M.gguf": "0" * 64})

    def verify(*args: object, **kwargs: object) -> dict[str, object]:
        raise AssertionError("a file that fails its sha256 check is never loaded")

    monkeypatch.setattr(convert, "verify", verify)
    out = tmp_path / "out"
    with pytest.raises(prepare_hub.PrepareError, match=r"sha256 does not match the hub's .*nothing was kept"):
        pipeline.run_prebuilt(TINY, 8 * units.GiB, "test", out, say=lambda m: None)
    assert list(out.iterdir()) == []  # neither the model, its manifest nor the work directory


def test_run_prebuilt_verifies_before_it_moves_the_files_into_place(
    stub: Hub, tiny_gguf: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub.repos["test/Tiny-GGUF"] = Repo({"tiny-Q4_K_M.gguf": tiny_gguf, "tiny-Q8_0.gguf": tiny_gguf})
    loaded: list[Path] = []

    def verify(model: Path, mmproj: Path | None, embedding: bool = False) -> dict[str, object]:
        loaded.append(model)
        return {"generated_tokens": 4}

    monkeypatch.setattr(convert, "verify", verify)
    out = tmp_path / "out"
    result = pipeline.run_prebuilt(TINY, 8 * units.GiB, "test", out, name="mine.{quant}", say=lambda m: None)
    assert [p.parent.name.startswith(".pull-test--Tiny-GGUF-") for p in loaded] == [True]  # in the work directory
    assert sorted(p.name for p in out.iterdir()) == ["mine.Q4_K_M.gguf", "mine.Q4_K_M.json"]  # auto: the pull's
    assert result.model.read_bytes() == tiny_gguf
    manifest = json.loads(result.manifest.read_text())
    assert manifest["sha256"] == hub_client.sha256_file(result.model) and manifest["file"] == "mine.Q4_K_M.gguf"
    assert (manifest["name"], manifest["quant"], manifest["kind"], manifest["mmproj"]) == (
        "mine.Q4_K_M",
        "Q4_K_M",
        "chat",
        None,
    )
    assert manifest["source"]["repo"] == "test/Tiny-GGUF" and manifest["source"]["file"] == "tiny-Q4_K_M.gguf"
    assert manifest["verified"] == {"generated_tokens": 4} and manifest["planned_for"]["memory"] == 8 * units.GiB


def test_the_transfer_continues_a_cut_download_then_gives_up() -> None:
    slept: list[float] = []
    said: list[str] = []
    calls: list[int] = []

    def cut_once() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise requests.exceptions.ChunkedEncodingError("connection broken")
        return "done"

    assert hub_client.transfer("someone/Model-GGUF", cut_once, said.append, slept.append) == "done"
    assert said == [
        "the download from someone/Model-GGUF was cut off (ChunkedEncodingError: connection broken); "
        f"continuing where it stopped (try 2 of {hub_client.TRANSFER_TRIES})"
    ]

    def always_cut() -> str:
        raise requests.exceptions.ChunkedEncodingError("connection broken")

    said.clear()
    slept.clear()
    with pytest.raises(hub_client.HubError, match=r"cut off .*; the part downloaded is kept: the next try continues"):
        hub_client.transfer("someone/Model-GGUF", always_cut, said.append, slept.append)
    assert len(said) == hub_client.TRANSFER_TRIES - 1 and slept == [2 * a for a in range(1, hub_client.TRANSFER_TRIES)]


@pytest.mark.parametrize(
    ("repo", "revision", "message"),
    [
        ("nobody/no-such-model", None, "no model repo 'nobody/no-such-model' on the hub"),
        ("test/Tiny-GGUF", "v9.9", "test/Tiny-GGUF has no revision 'v9.9'"),
    ],
)
def test_one_error_message_for_the_pull_and_llmpi_prepare(
    stub: Hub, tiny_gguf: bytes, repo: str, revision: str | None, message: str
) -> None:
    stub.repos["test/Tiny-GGUF"] = Repo({"tiny-Q4_K_M.gguf": tiny_gguf})
    with pytest.raises(hub_client.HubError, match=message):
        hub_client.inspect(repo, revision, None)
    with pytest.raises(prepare_hub.PrepareError, match=message):
        prepare_hub.inspect(repo, revision)


def test_an_unreachable_hub_is_one_message_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard: nothing listens
    expected = r"cannot reach the hub at http://127\.0\.0\.1:9 for test/Tiny-GGUF"
    with pytest.raises(hub_client.HubUnreachable, match=expected):
        hub_client.inspect("test/Tiny-GGUF", None, None)
    with pytest.raises(prepare_hub.PrepareError, match=expected):
        prepare_hub.inspect("test/Tiny-GGUF")


def test_llmpi_prepare_reads_the_token_as_the_appliance_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("hf_secret\n")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_TOKEN_FILE", str(token_file))
    assert prepare_hub.token_from_env() == "hf_secret" == hub_token({"HF_TOKEN_FILE": str(token_file)})
    monkeypatch.setenv("HF_TOKEN", "hf_other")
    with pytest.raises(prepare_hub.PrepareError, match="both HF_TOKEN and HF_TOKEN_FILE are set"):
        prepare_hub.token_from_env()
    monkeypatch.setenv("HF_TOKEN_FILE", str(tmp_path / "missing"))
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(prepare_hub.PrepareError, match=r"HF_TOKEN_FILE=.*missing: cannot read it"):
        prepare_hub.token_from_env()


def test_the_pull_and_llmpi_prepare_write_one_manifest_format(tmp_path: Path) -> None:
    model = tmp_path / "m.Q4_K_M.gguf"
    model.write_bytes(b"weights")
    data = pull.manifest(
        source={"repo": "o/r", "revision": "abc"},
        architecture="llama",
        kind="chat",
        quant="Q4_K_M",
        model=model,
        mmproj=None,
        parameters=7,
        trained_context=4096,
        extra={"verified": {"generated_tokens": 1}},
    )
    assert list(data) == [
        "source",
        "architecture",
        "kind",
        "quant",
        "file",
        "sha256",
        "size",
        "parameters",
        "trained_context",
        "mmproj",
        "verified",
        "created",
    ]
    assert (data["file"], data["sha256"], data["size"]) == (model.name, hub_client.sha256_file(model), 7)
