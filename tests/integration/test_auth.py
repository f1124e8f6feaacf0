"""Token authentication as cluster.yaml turns it on, tried the way an attacker would
(issue 13 §8; Ray >= 2.52, docs.ray.io/en/latest/ray-security/token-auth.html).

A head of our own, started as cluster.yaml starts it (`RAY_AUTH_MODE=token ray start --head`,
dashboard included), with a token made by `ray get-auth-token --generate`:

- without the token, `ray job submit` is refused (HTTP 401 from the jobs API), so is a plain
  HTTP request to the jobs API (listing 401, a job POSTed by hand 401, a wrong bearer token
  403), and a driver joining the GCS port with `ray.init(address=...)` (the other door);
- with the token, `ray job submit` runs a job whose driver connects to the cluster and runs a
  task: its output (`IDRM_AUTH_JOB 42`) proves it ran, and the attacker's job never did (its
  marker file is absent; the jobs list holds only the legitimate job).

The head is isolated from any other Ray on this machine (shared by several people): its own
free ports (the dashboard agent's default 52365 clashes, STACK_NOTES.md), its own --temp-dir,
and a HOME of its own, so neither the token nor `~/.ray/auth_token` of the user is touched. It
runs `ray start --block` in its own process group and is stopped by signalling that group
(never a bare `ray stop`, which would stop other people's Ray). About 20 s on a quiet 2-core
machine: the head's start-up (nine dashboard subprocesses, ~7 s), then the three clients at once
(the owner's job, ~10 s, is the longest).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

RAY = str(Path(sys.executable).with_name("ray"))
START_TIMEOUT_S = 150
JOB_MARKER = "IDRM_AUTH_JOB"


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _http(url: str, *, token: str | None = None, body: dict | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    data = None
    if body is not None:
        data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
    request = urllib.request.Request(url, data=data, headers=headers, method="POST" if body else "GET")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _pids_under(temp_dir: str) -> list[int]:
    """Processes whose command line names our --temp-dir (Ray passes it to every process)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if temp_dir.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


class _Head:
    """`ray start --head --block` with token auth, on free ports, in its own process group."""

    def __init__(self, root: Path, env: dict):
        self.temp_dir = tempfile.mkdtemp(prefix="idrm-auth-", dir="/tmp")  # short: socket paths
        gcs, dash, *rest = _free_ports(10)
        agent, agent_grpc, metrics, client, nm, om, runtime_env, dash_metrics = rest
        self.gcs_address, self.url = f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dash}"
        cmd = [RAY, "start", "--head", "--block", f"--port={gcs}", "--include-dashboard=true",
               "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
               f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
               f"--metrics-export-port={metrics}", f"--ray-client-server-port={client}",
               f"--node-manager-port={nm}", f"--object-manager-port={om}",
               f"--runtime-env-agent-port={runtime_env}", "--num-cpus=1", f"--temp-dir={self.temp_dir}",
               "--disable-usage-stats"]
        self.log = root / "head.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(cmd, env=dict(env, DASHBOARD_METRIC_PORT=str(dash_metrics)),
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_up(self, token: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"the head exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")
            try:  # the jobs API answers the owner once the HTTP server and its job module are up
                if _http(f"{self.url}/api/jobs/", token=token)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        pytest.fail(f"the head's dashboard did not come up in {START_TIMEOUT_S} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # `ray start --block` stops what it started
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        for pid in _pids_under(self.temp_dir):  # anything that left the group, ours by its temp dir
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _submit(url: str, script: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([RAY, "job", "submit", "--address", url, "--", sys.executable, str(script)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _join_gcs(address: str, env: dict) -> subprocess.Popen:
    code = f"import ray\nray.init(address={address!r})\nprint('JOINED', ray.cluster_resources())\n"
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, timeout_s: float) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        return -9, out
    return proc.returncode, out


def test_token_auth_head_refuses_without_token_and_runs_with_it(tmp_path):
    start = time.perf_counter()
    home = tmp_path / "home"
    home.mkdir()
    # An attacker's environment: no Ray auth settings, no RAY_ADDRESS, an empty HOME.
    bare = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    bare.update(HOME=str(home), RAY_USAGE_STATS_ENABLED="0")
    made = subprocess.run([RAY, "get-auth-token", "--generate"], env=dict(bare, RAY_AUTH_MODE="token"),
                          capture_output=True, text=True, timeout=60)
    token_path = home / ".ray" / "auth_token"
    assert made.returncode == 0 and token_path.is_file(), made.stderr
    token = token_path.read_text().strip()
    assert len(token) >= 32 and made.stdout.strip() == token
    owner = dict(bare, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_path))  # as cluster.yaml's nodes
    attacker = dict(bare, HOME=str(tmp_path / "attacker"))  # no token file at all

    pwned = tmp_path / "pwned"
    job = tmp_path / "job.py"
    job.write_text("import ray\nray.init()\n"
                   f"print('{JOB_MARKER}', ray.get(ray.remote(lambda: 6 * 7).remote()))\n")
    head = _Head(tmp_path, owner)
    try:
        head.wait_up(token)
        up_s = time.perf_counter() - start
        # Plain HTTP, as a scanner would: list jobs, POST a job, guess a token.
        assert _http(f"{head.url}/api/jobs/")[0] == 401
        status, text = _http(f"{head.url}/api/jobs/", body={"entrypoint": f"touch {pwned}"})
        assert status == 401, text
        assert _http(f"{head.url}/api/jobs/", token="0" * len(token))[0] == 403
        assert _http(f"{head.url}/api/jobs/", token=token) == (200, "[]")  # the owner: nothing ran
        # The attacker's CLI and driver, and the owner's job, at once (each mostly imports Ray).
        cli = _submit(head.url, job, attacker)
        # The GCS door refuses each try the same way; Ray's driver tries 20 times, 1 s apart, before
        # it gives up (RAY_NUM_REDIS_GET_RETRIES), so this attacker tries twice: 2 s instead of 20.
        gcs = _join_gcs(head.gcs_address, dict(attacker, RAY_NUM_REDIS_GET_RETRIES="2"))
        mine = _submit(head.url, job, owner)

        rc, out = _finish(cli, 120)
        assert rc != 0 and "Missing authentication token" in out and JOB_MARKER not in out, out
        rc, out = _finish(gcs, 120)
        assert rc != 0 and "JOINED" not in out and "Authentication token is missing or incorrect" in out, out
        rc, out = _finish(mine, 180)
        assert rc == 0 and f"{JOB_MARKER} 42" in out and "succeeded" in out, out
        status, text = _http(f"{head.url}/api/jobs/", token=token)
        jobs = json.loads(text)
        assert status == 200 and [j["entrypoint"] for j in jobs] == [f"{sys.executable} {job}"], jobs
        assert not pwned.exists()
        checked_s = time.perf_counter() - start
    finally:
        head.stop()
    assert not _pids_under(head.temp_dir)
    print(f"[auth] head up at {up_s:.1f} s, checks done at {checked_s:.1f} s, "
          f"head stopped at {time.perf_counter() - start:.1f} s")
