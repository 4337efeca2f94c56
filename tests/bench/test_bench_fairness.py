"""scripts/bench-fairness --quick (issue 24): the household scenario and the throughput, fairness on and off, run
end to end and make a complete record; with fairness on the kitchen's first token comes before the laptop's queue is
done, and after fewer of the laptop's requests than with it off. The speeds themselves are benchmark results
(docs/benchmarks.md), not asserted here."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.compose_helpers import ARTIFACTS, ROOT, compose_env

pytestmark = pytest.mark.bench

HOUSEHOLD = {
    "a_requests", "a_ok", "a_tokens", "a_errors", "a_admitted_s", "a_waiting_when_b_sent", "b_tokens", "b_ttft_ms",
    "b_total_ms", "a_queue_s", "slot_turnaround_ms", "b_ttft_in_turnarounds", "a_done_before_b_first_token",
    "b_first_token_before_a_done", "b_first_token_to_a_done_s",
}  # fmt: skip


def test_bench_fairness_smoke(appliance_image: str) -> None:
    out = ARTIFACTS / "bench-fairness-quick.json"
    ARTIFACTS.mkdir(exist_ok=True)
    out.unlink(missing_ok=True)
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench-fairness"), "--quick", "--image", appliance_image,
         "--out", str(out)],
        env=compose_env(), capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    (ARTIFACTS / "bench-fairness-quick.log").write_text(done.stdout + done.stderr)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rec = json.loads(out.read_text())
    assert json.loads(done.stdout) == rec  # the same record on stdout
    assert rec["quick"] and rec["rounds"] == 1 and rec["commit"] and rec["machine"]["cpus"]

    home = rec["household"]
    assert home["slots"] == 2 and home["queue_max"] == 16
    for label in ("on", "off"):
        h = home[label]
        assert set(h) == HOUSEHOLD, (label, h)
        assert h["a_ok"] == h["a_requests"] == 16 and h["a_tokens"] == [rec["long_tokens"]], (label, h)
        assert not h["a_errors"] and h["b_tokens"] == 8, (label, h)
        assert h["a_waiting_when_b_sent"] >= 8, (label, h)  # the kitchen came while the laptop's queue was full
        assert h["b_ttft_ms"] > 0 and h["b_total_ms"] >= h["b_ttft_ms"] and h["slot_turnaround_ms"] > 0, (label, h)
        assert h["a_queue_s"] > 0, (label, h)
    on, off = home["on"], home["off"]
    # keys take turns: the kitchen's short request is not kept behind the laptop's whole queue
    assert on["b_first_token_before_a_done"], on
    assert on["a_done_before_b_first_token"] < off["a_done_before_b_first_token"], (on, off)

    tput = rec["throughput"]
    assert tput["slots"] == 8
    for label in ("on", "off"):
        assert set(tput[label]) == {"1", "8"}, tput
        for n in ("1", "8"):
            assert set(tput[label][n]) == {"aggregate_tps", "stream_tps", "ttft_ms"}, tput
            assert all(v > 0 for v in tput[label][n].values()), tput
    assert set(tput["ratio_on_off"]) == {"1_stream_gen_tps", "8_streams_aggregate_tps"}
    assert all(v > 0 for v in tput["ratio_on_off"].values()) and tput["target_ratio"] == 0.98
