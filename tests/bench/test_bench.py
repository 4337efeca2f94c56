"""scripts/bench at its smallest setting (issue 7): it runs all of its parts and writes a well-formed record.
The speed targets themselves are benchmark results (docs/benchmarks.md), not asserted here. It runs with --no-peer:
llama-cpp-python's server (the `peer` image, 5 to 20 minutes to build from its sdist) is the benchmark's own
comparison, not something the appliance's tests need; a user's `scripts/bench` still compares against it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.compose_helpers import ARTIFACTS, ROOT, compose_env

pytestmark = pytest.mark.bench


def _positive_numbers(value: Any, path: str = "") -> list[str]:
    """Paths of the numbers in a record that are not positive (ratios and differences excepted)."""
    bad: list[str] = []
    if isinstance(value, bool):
        return bad
    if isinstance(value, int | float):
        return [] if value > 0 else [path]
    if isinstance(value, dict):
        for k, v in value.items():
            if (path.endswith("ratios") and k == "ttft_minus_hand_ms") or k == "tokens":
                continue  # a difference, which may be negative; per-stream counts, checked by "complete"
            bad += _positive_numbers(v, f"{path}.{k}")
    if isinstance(value, list):
        for i, v in enumerate(value):
            bad += _positive_numbers(v, f"{path}[{i}]")
    return bad


def test_bench_smoke(appliance_image: str, tmp_path: Path) -> None:
    results = tmp_path / "bench.jsonl"
    r = subprocess.run(
        # this interpreter: the test extras' matplotlib draws the chart
        [
            sys.executable,
            str(ROOT / "scripts" / "bench"),
            "--quick",
            "--no-peer",
            "--results",
            str(results),
            "--png",
            str(tmp_path / "g.png"),
        ],
        capture_output=True,
        text=True,
        timeout=1200,
        env=compose_env(),
    )
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "bench-smoke.log").write_text(r.stdout + r.stderr)
    assert r.returncode == 0, r.stdout + r.stderr
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(records) == 1
    rec = records[0]
    assert set(rec["servers"]) == {"appliance", "llama-server by hand"}
    for label, server in rec["servers"].items():
        assert set(server["single"]) == {"ttft_ms", "gen_tps", "complete"}
        assert set(server["concurrent"]) == {"2"}
        assert server["single"]["complete"] and server["concurrent"]["2"]["complete"], (label, server)
    assert {"pp32_tps", "tg16_tps"} == set(rec["llama_bench"])
    assert rec["commit"] and rec["machine"]["cpus"] and rec["date"]
    assert set(rec["image_mib"]) == {"runtime (no model)", "appliance"}
    assert not _positive_numbers({k: v for k, v in rec.items() if k not in ("ratios", "speed", "ollama")}), (
        _positive_numbers(rec)
    )
    # the Ollama door against the OpenAI door: both measured, one stream and four, and the ratios out
    ollama = rec["ollama"]
    for door in ("openai", "ollama"):
        assert set(ollama[door]) == {"1", "4"}, ollama
        assert all(r["aggregate_tps"] > 0 and r["ttft_ms"] > 0 for r in ollama[door].values()), ollama
    assert rec["ratios"]["ollama_x4_aggregate_tps_ratio"] > 0 and "ollama_x1_ttft_diff_ms" in rec["ratios"]
    assert any("ollama" in name for name in rec["servers"]["appliance"]["processes"])  # the door's memory
    # issue 15's scenarios, at their smallest: both servers ran them, the ratios came out, the chart was drawn
    speed = rec["speed"]
    assert set(speed["multi_turn"]) == {"appliance", "llama-server by hand", "no reuse"}, speed
    assert set(speed["rag"]) == {"llama-server by hand", "ngram", "by hand, again"}, speed
    for label, m in speed["multi_turn"].items():
        assert len(m["rows"]) == 4 and m["median_ttft_ms_turns_2_on"] > 0, (label, m)
        assert all(r["prompt_tokens"] > 0 for r in m["rows"]), (label, m)
    assert speed["rag_same_text"]["n"] == 2 and 0 <= speed["rag_same_text"]["ngram_vs_by_hand"] <= 2
    assert [g["target_tokens"] for g in speed["growth"]["rows"]] == [128, 256]
    assert all(g["prompt_tokens"] > 0 and g["gen_tps"] > 0 for g in speed["growth"]["rows"])
    assert speed["growth"]["png"] and Path(speed["growth"]["png"]).stat().st_size > 1000
    assert rec["ratios"]["multi_turn_ttft_vs_hand"] > 0 and rec["ratios"]["rag_ngram_vs_hand"] > 0
    assert rec["ratios"]["multi_turn_ttft_vs_no_reuse"] > 0 and rec["ratios"]["x2_vs_hand"] > 0
    assert rec["ratios"]["single_vs_hand"] > 0 and not any(k.endswith("_vs_peer") for k in rec["ratios"])
    assert "llama-server by hand" in r.stdout and "ratios:" in r.stdout  # the printed table


def test_bench_cluster_smoke(appliance_image: str) -> None:
    """scripts/bench-cluster --quick: 1 and 2 nodes, with and without spiped, both placements of the output layer,
    and the channel alone; its record is complete, every --no-repack row generates the same text, and with the
    appliance's placement (output on the head) a token moves kilobytes, not the logits' megabyte."""
    out = ARTIFACTS / "bench-cluster-quick.json"
    ARTIFACTS.mkdir(exist_ok=True)
    done = subprocess.run(
        [str(ROOT / "scripts" / "bench-cluster"), "--quick", "--json", str(out)],
        env=compose_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads(out.read_text())
    rows = {r["label"]: r for r in record["rows"]}
    assert set(rows) == {
        "1 node",
        "1 node, --no-repack",
        "2 nodes, no channel",
        "2 nodes, spiped",
        "2 nodes, no channel, output on head",
        "2 nodes, spiped, output on head",
    }
    assert all(r["all_tokens"] and r["gen_tps"] > 0 and r["prompt_tps"] > 0 for r in rows.values())
    same = rows["1 node, --no-repack"]["text"]
    assert all(r["text"] == same for label, r in rows.items() if label != "1 node"), "a --no-repack row differs"
    assert rows["2 nodes, spiped, output on head"]["network_bytes_per_token"] < 200_000
    assert rows["2 nodes, spiped"]["network_bytes_per_token"] > 1_000_000  # the logits, with the output on the worker
    channel = record["channel"]
    assert channel["spiped"]["mb_per_s"] > 0 and channel["direct"]["mb_per_s"] > channel["spiped"]["mb_per_s"]
