"""The reward actor on Ray Serve, on loopback only: OpenRLHF's own client code gets our
rewards (its HTTP fetch and its `reward_func` file loader, from `openrlhf.utils.agent`,
which imports on CPU), bad requests are refused through the Serve proxy and the server
keeps serving, bearer auth switched on and off on live replicas, a bounded load test
(400 requests from 16 clients) ends with 0 errors, a 12 s soak of mixed valid and invalid
traffic has no 5xx and only the expected 4xx, and `idrm-ray serve --smoke`.

Budget: about 30 s on 2 cores (Serve start ~10 s, load test a few s, soak ~12 s).
"""
from __future__ import annotations

import asyncio
import json
import shutil
import socket
import urllib.error
import urllib.request

import pytest

from idrm_ray.config import load_config
from idrm_ray.core import tiny
from idrm_ray.core.reward_model import save_reward_model
from idrm_ray.serve import par_reward
from idrm_ray.config.serve import ServeJobConfig
from idrm_ray.serve.loadtest import run_load_test
from idrm_ray.serve.scoring import RewardScorer

PROMPTS = ["Human: What does the cat like?\n\nAssistant:", "Human: hello?\n\nAssistant:"]
RESPONSES = [" The cat likes the ball.</s>", " yes, 0123.</s>"]
QUERIES = [p + r for p, r in zip(PROMPTS, RESPONSES)]
TOKEN = "integration-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, student_tokenizer):
    model = tiny.build_tiny_student(student_tokenizer, num_layers=2)
    return save_reward_model(model, student_tokenizer, tmp_path_factory.mktemp("rm") / "model", mean=0.25, std=3.0)


@pytest.fixture(scope="module")
def local(checkpoint):
    return RewardScorer.from_checkpoint(checkpoint)


def serve_config(checkpoint, *overrides):
    return load_config(ServeJobConfig, None, [
        f"model.checkpoint={checkpoint}", f"server.port={free_port()}", "server.max_body_bytes=65536",
        "server.max_batch=8", "deployment.num_cpus=0.5", "deployment.max_batch_size=32", *overrides])


@pytest.fixture(scope="module")
def server(ray_session, checkpoint, guard):
    from ray import serve

    from idrm_ray.serve.runner import start_server

    cfg = serve_config(checkpoint)
    handle = guard(lambda: start_server(cfg), timeout_s=180, what="Ray Serve reward server start")
    yield cfg, handle
    handle.stop()
    serve.shutdown()  # leave the shared Ray as we found it


def test_openrlhf_http_client_gets_our_rewards(server, local):
    from openrlhf.utils.agent import SingleTurnAgentExecutor  # imports on CPU (needs pylatexenc)

    _, handle = server
    executor = SingleTurnAgentExecutor(remote_rm_url=handle.reward_url)
    (answer,) = asyncio.run(executor._fetch_rewards_via_http(QUERIES, PROMPTS, [None, None]))
    expected = local.score(QUERIES, PROMPTS).raw
    assert answer["rewards"] == pytest.approx(expected, abs=1e-5)
    assert answer["scores"] == answer["rewards"] and answer["extra_logs"]["raw_reward"] == answer["rewards"]


def test_openrlhf_loads_our_par_reward_func(server, local, tmp_path, monkeypatch):
    from openrlhf.utils.agent import SingleTurnAgentExecutor

    _, handle = server
    refs = tmp_path / "refs.jsonl"
    refs.write_text(json.dumps({"prompt": PROMPTS[0], "references": [RESPONSES[0], " a dog sees.</s>"]}) + "\n")
    monkeypatch.setenv(par_reward.ENV_URL, handle.reward_url)
    monkeypatch.setenv(par_reward.ENV_REFERENCES, str(refs))
    func_file = shutil.copy(par_reward.__file__, tmp_path / "idrm_par_reward.py")  # as the PPO job stages it
    executor = SingleTurnAgentExecutor(remote_rm_url=str(func_file))  # OpenRLHF's importlib loader
    assert executor.reward_func is not None
    (out,) = asyncio.run(executor._fetch_rewards_via_func([QUERIES[0]], [PROMPTS[0]], [None]))
    r, r_ref0, r_ref1 = local.score([QUERIES[0], PROMPTS[0] + RESPONSES[0], PROMPTS[0] + " a dog sees.</s>"]).raw
    expected = (par_reward.sigmoid(r - r_ref0) + par_reward.sigmoid(r - r_ref1)) / 2
    assert out["rewards"].item() == pytest.approx(expected, abs=1e-5)
    assert out["extra_logs"]["raw_reward"].item() == pytest.approx(r, abs=1e-5)
    # The response is the first reference: that term is sigmoid(0) = 1/2 exactly (up to fp32 noise).
    assert par_reward.sigmoid(r - r_ref0) == pytest.approx(0.5, abs=1e-5)


def test_bad_requests_through_the_proxy_then_valid_ones_still_work(server, local):
    _, handle = server
    url, good = handle.reward_url, json.dumps({"query": QUERIES, "prompts": PROMPTS}).encode()
    cases = [
        (b" " * 70_000, 413, "exceeds the limit of 65536"),
        (json.dumps({"query": ["x"] * 9}).encode(), 413, "9 queries in one request; the limit is 8"),
        (b"{oops", 400, "not valid JSON"),
        (b'{"query": [1, 2]}', 422, "`query[0]` must be a string, got int"),
        (b'{"query": ["a"], "prompts": "a"}', 422, "`prompts` must be a list of strings"),
    ]
    for body, status, piece in cases:
        got, answer = post(url, body)
        assert got == status and piece in answer["detail"], answer
        got, answer = post(url, good)
        assert got == 200 and answer["rewards"] == pytest.approx(local.score(QUERIES, PROMPTS).raw, abs=1e-5)


def test_auth_switched_on_and_off_on_live_replicas(server, monkeypatch):
    from ray import serve

    from idrm_ray.serve.deployment import build_application

    cfg, handle = server
    url, good = handle.reward_url, json.dumps({"query": QUERIES[:1]}).encode()
    replica = json.loads(urllib.request.urlopen(handle.base_url + "/health").read())["replica"]
    try:
        serve.run(build_application(cfg, TOKEN), name=cfg.server.app_name, route_prefix="/")  # reconfigure only
        assert post(url, good)[0] == 401
        got, answer = post(url, good, {"Authorization": "Bearer wrong"})
        assert got == 401 and answer["detail"] == "invalid bearer token"
        assert post(url, good, {"Authorization": f"Bearer {TOKEN}"})[0] == 200
        health = urllib.request.Request(handle.base_url + "/health", headers={"Authorization": f"Bearer {TOKEN}"})
        assert json.loads(urllib.request.urlopen(health).read())["replica"] == replica  # not restarted
    finally:
        serve.run(build_application(cfg, None), name=cfg.server.app_name, route_prefix="/")
    assert post(url, good)[0] == 200


def test_bounded_load_test_has_no_errors(server, capsys):
    _, handle = server
    payloads = [{"query": [q], "prompts": [p], "labels": [None]} for q, p in zip(QUERIES, PROMPTS)]
    stats = run_load_test(handle.reward_url, payloads, requests=400, concurrency=16, timeout_s=120)
    with capsys.disabled():
        print(f"\n[load test] Ray Serve, 1 CPU replica, tiny RM: {stats.line()} statuses={stats.statuses}")
    assert stats.errors == 0, stats.first_error
    assert stats.completed == 400 and stats.p99_ms >= stats.p50_ms > 0


def test_soak_mixed_traffic_has_no_5xx_and_clear_refusals(server, tmp_path, capsys):
    """A short soak (12 s) of the live server: valid requests of varied size and length
    mixed with every invalid case (serve/soak.py), replica RSS sampled each second."""
    from idrm_ray.serve.protocol import Limits
    from idrm_ray.serve.soak import run_soak, serve_pids
    from idrm_ray.serve.soak_cases import invalid_cases

    cfg, handle = server
    s = cfg.server
    limits = Limits(max_body_bytes=s.max_body_bytes, max_batch=s.max_batch, max_query_chars=s.max_query_chars)
    pids = serve_pids(s.app_name)
    assert "proxy" in pids and any(name.startswith("replica ") for name in pids)
    report = run_soak(handle.base_url, limits=limits, duration_s=12, window_s=3, warmup_s=3, clients=4,
                      invalid_fraction=0.5, out_dir=tmp_path, pids=pids, max_len=cfg.model.max_len,
                      eos_text="</s>", out=lambda line: None)
    with capsys.disabled():
        lat = report["latency_valid_ok"]
        print(f"\n[soak] 12 s: {report['requests']} requests, statuses {report['statuses']}, valid p50 "
              f"{lat['p50_ms']} ms p99 {lat['p99_ms']} ms, replica RSS growth {report['rss_growth_pct']}%")
    assert report["5xx"] == 0 and report["transport_errors"] == 0, report["statuses"]
    assert report["checks"]["valid_all_200"], {k: c for k, c in report["cases"].items() if c["failed"]}
    expected = {c.name: c.expect for c in invalid_cases(limits, max_len=cfg.model.max_len, eos_text="</s>")}
    assert len(expected) >= 20 and "specials_over_max_len" in expected
    for name, status in expected.items():  # each invalid case sent, each answered its 4xx with a detail
        case = report["cases"][name]
        assert case["failed"] == 0 and case["statuses"] == {str(status): case["sent"]}, (name, case)
        assert case["detail"].strip(), name
    details = {name: report["cases"][name]["detail"] for name in expected}
    assert "nested too deeply" in details["deep_nesting"] and "lone surrogate" in details["lone_surrogate"]
    assert "9 queries in one request; the limit is 8" in details["too_many_queries"]
    assert "exceeds the limit of 65536" in details["oversize_body"]
    assert "missing field `query`" in details["missing_query"] and "not valid JSON" in details["malformed_json"]
    assert [w["start_s"] for w in report["windows"]] == [0, 3, 6, 9]
    assert all(w["requests"] > 0 and w["p99_ms"] >= w["p50_ms"] > 0 for w in report["windows"])
    replica = next(m for name, m in report["memory"].items() if name.startswith("replica "))
    assert replica["samples"] >= 10 and replica["warmup_mib"] > 0 and isinstance(replica["growth_pct"], float)
    assert json.loads((tmp_path / "soak.json").read_text())["requests"] == report["requests"]
    md = (tmp_path / "soak.md").read_text()
    assert "| 0-3 (warm-up) |" in md and "| deep_nesting |" in md and "## Resident memory" in md


def test_cli_smoke_plain_backend(checkpoint, capsys):
    from idrm_ray.cli import main

    rc = main(["serve", "--checkpoint", str(checkpoint), "--backend", "plain", "--port", str(free_port()), "--smoke"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "reward server ready: POST http://127.0.0.1:" in out and "smoke: 200 requests" in out and " 0 errors" in out
