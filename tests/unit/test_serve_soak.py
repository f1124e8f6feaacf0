"""The soak's cases and report arithmetic without a server (the live soak is
tests/integration/test_serve_ray.py): every invalid case is refused with its 4xx by the
protocol, windows and percentiles, and the RSS gate reads medians, not a transient peak."""
from __future__ import annotations

import json
import os

import pytest

from idrm_ray.serve.protocol import Limits, RequestError, parse_reward_request
from idrm_ray.serve.soak import read_rss
from idrm_ray.serve.soak_cases import Record, invalid_cases, valid_cases
from idrm_ray.serve.soak_report import summarize, write_report

LIMITS = Limits(max_body_bytes=65536, max_batch=8, max_query_chars=20_000)
SETTINGS = {"base_url": "http://127.0.0.1:1", "duration_s": 20, "window_s": 10, "warmup_s": 5, "clients": 2,
            "invalid_fraction": 0.3, "max_rss_growth": 0.1, "pids": {"replica a": 1, "proxy": 2}}


def test_cases_parse_as_they_must():
    for case in valid_cases(LIMITS):
        assert case.valid and len(case.body) <= LIMITS.max_body_bytes
        assert len(parse_reward_request(case.body, LIMITS)) == case.n_queries <= LIMITS.max_batch
    assert {c.n_queries for c in valid_cases(LIMITS)} >= {1, 2, 4, 8}
    invalid = invalid_cases(LIMITS, max_len=64, eos_text="</s>")
    assert len(invalid) >= 20 and len({c.name for c in invalid}) == len(invalid)
    for case in invalid:
        assert 400 <= case.expect < 500
        if case.method != "POST" or case.path != "/get_reward" or case.name == "specials_over_max_len":
            continue  # answered by routing / by the scorer, not by the protocol
        with pytest.raises(RequestError) as err:
            parse_reward_request(case.body, LIMITS)
        assert err.value.status == case.expect, case.name


def _records() -> list[Record]:
    rows = [Record(t, "valid_b1", True, "200", 10.0 + t, True) for t in range(20)]
    rows += [Record(t + 0.5, "missing_query", False, "422", 2.0, True, "missing field `query`") for t in range(20)]
    return rows


def test_summary_windows_and_rss_gate(tmp_path):
    # RSS: 100 MiB, a transient spike to 300 MiB right after warm-up, then flat at 104 MiB.
    mib = 1 << 20
    rss = {"replica a": [(t, (300 if t == 6 else 100 if t < 15 else 104) * mib) for t in range(21)],
           "proxy": [(t, 50 * mib) for t in range(21)]}
    report = summarize(_records(), rss, duration_s=20, window_s=10, warmup_s=5, max_rss_growth=0.1,
                       settings=SETTINGS)
    assert report["passed"] and report["5xx"] == 0 and report["statuses"] == {"200": 20, "422": 20}
    assert [(w["start_s"], w["requests"], w["valid_ok"], w["warmup"]) for w in report["windows"]] == [
        (0, 20, 10, True), (10, 20, 10, False)]
    assert report["windows"][1]["p50_ms"] == 24.0 and report["windows"][1]["p99_ms"] == 29.0
    replica = report["memory"]["replica a"]
    assert replica["warmup_mib"] == 100 and replica["end_mib"] == 104 and replica["peak_after_warmup_mib"] == 300
    assert report["rss_growth_pct"] == 4.0
    assert report["cases"]["missing_query"] == {"sent": 20, "failed": 0, "statuses": {"422": 20},
                                                "detail": "missing field `query`"}
    js, md = write_report(report, tmp_path)
    assert json.loads(js.read_text())["passed"] and "| 0-10 (warm-up) | 20 | 10 |" in md.read_text()

    # A 5xx, a wrong refusal and 15% growth each fail the soak.
    bad = _records() + [Record(15, "valid_b1", True, "500", 1.0, False, "boom"),
                        Record(16, "missing_query", False, "400", 1.0, False, "?")]
    rss["replica a"] = [(t, (100 if t < 15 else 115) * mib) for t in range(21)]
    report = summarize(bad, rss, duration_s=20, window_s=10, warmup_s=5, max_rss_growth=0.1, settings=SETTINGS)
    assert not report["passed"] and report["5xx"] == 1 and report["rss_growth_pct"] == 15.0
    assert {k for k, v in report["checks"].items() if not v} == {
        "no_5xx", "valid_all_200", "invalid_all_expected_4xx", "rss_growth_under_limit"}


def test_read_rss_of_this_process():
    assert read_rss(os.getpid()) > 10 << 20
    assert read_rss(2**22 + 12345) is None  # no such process
