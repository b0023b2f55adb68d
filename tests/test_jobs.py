"""`rlreason submit` against a real local Ray head with token authentication on: a 2-step job with a
custom reward file that lives outside the working dir. The head is stopped by its own process
session, never with `ray stop` (which kills every Ray process on the machine)."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

from rlreason.config import load_config
from rlreason.jobs import Stager, auth_token, copy_tree, stage_config
from shared_builders import session_processes

REWARD = '''def short(*, response, **columns):
    """Shorter is better."""
    return -len(response) / 16.0
'''


# ---- without a cluster ---------------------------------------------------------------------------

def test_token_is_found_where_ray_looks(tmp_path, monkeypatch):
    for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert auth_token() is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-home\n")
    assert auth_token() == "from-home"
    (tmp_path / "t").write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "t"))
    assert auth_token() == "from-path"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert auth_token() == "from-env"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert auth_token() is None


def test_staging_rewrites_named_files_and_ships_the_outside_ones(tmp_path):
    work, outside = tmp_path / "project", tmp_path / "elsewhere"
    (work / "data").mkdir(parents=True)
    outside.mkdir()
    (work / "data" / "train.jsonl").write_text('{"prompt": "1+1", "answer": "2"}\n')
    (work / "runs" / "old").mkdir(parents=True)  # excluded by default
    (work / "runs" / "old" / "big.bin").write_bytes(b"x" * 1000)
    (outside / "r.py").write_text(REWARD)
    staging = tmp_path / "staging"
    copy_tree(str(work), str(staging), ["runs"])
    cfg = load_config(["recipe=quickstart", f"data.train={work / 'data' / 'train.jsonl'}",
                       f"reward.functions=[{{name: '{outside / 'r.py'}:short'}}]", "model.path=Qwen/Qwen2.5-0.5B"])
    stager = Stager(str(work), str(staging))
    stage_config(cfg, stager)
    assert cfg.data.train == os.path.join("data", "train.jsonl")  # inside the working dir: relative
    name, _, fn = cfg.reward.functions[0].name.rpartition(":")
    assert fn == "short" and name.startswith("_rlreason_job/files/") and (staging / name).read_text() == REWARD
    assert cfg.model.path == "Qwen/Qwen2.5-0.5B" and cfg.cluster.address == "auto"  # a hub id is left alone
    assert not (staging / "runs").exists()


# ---- a real head ---------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A Ray head on 127.0.0.1 with RAY_AUTH_MODE=token and its own token file; yields (url, env)."""
    tmp = tmp_path_factory.mktemp("head")
    token = tmp / "token"
    token.write_text(uuid.uuid4().hex)
    temp_dir = tempfile.mkdtemp(prefix="rlr", dir="/tmp")  # short: Ray's socket paths must fit 107 chars
    bin_dir = os.path.dirname(sys.executable)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), PATH=f"{bin_dir}:{env.get('PATH', '')}",
               PYTHONUNBUFFERED="1")
    port, dash = _free_port(), _free_port()
    log = open(tmp / "head.log", "w")
    proc = subprocess.Popen([os.path.join(bin_dir, "ray"), "start", "--head", f"--port={port}",
                             "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--node-ip-address=127.0.0.1",
                             f"--temp-dir={temp_dir}", "--num-cpus=2", "--include-dashboard=true",
                             "--disable-usage-stats", "--block"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    try:
        _wait_for_job_server(url, token.read_text(), proc, tmp / "head.log")
        yield url, env
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):  # only this head's session, never `ray stop`
            for pid in session_processes(proc.pid):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            time.sleep(3)
        proc.wait(timeout=30)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_for_job_server(url: str, token: str, proc, log_path) -> None:
    from ray.job_submission import JobSubmissionClient

    deadline = time.time() + 180
    while True:
        assert proc.poll() is None, f"ray start exited: {open(log_path).read()[-3000:]}"
        try:
            JobSubmissionClient(url, headers={"Authorization": f"Bearer {token}"}).list_jobs()
            return
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(2)


def _rlreason(args, env, cwd, timeout=600):
    return subprocess.run([sys.executable, "-m", "rlreason", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=timeout)


@pytest.mark.slow
def test_submit_without_the_token_says_what_to_set(head, tmp_path):
    url, env = head
    no_token = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}
    no_token["HOME"] = str(tmp_path)  # no ~/.ray/auth_token either
    out = _rlreason(["submit", "--address", url, "--no-wait", "recipe=quickstart", "trainer.total_steps=1"],
                    no_token, str(tmp_path), timeout=120)
    assert out.returncode == 1, out.stderr[-2000:]
    assert "requires a token" in out.stderr and "RAY_AUTH_TOKEN" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_submit_a_two_step_job_with_a_custom_reward_file(head, tmp_path):
    url, env = head
    project, outside = tmp_path / "project", tmp_path / "my_rewards"
    project.mkdir()
    outside.mkdir()
    (outside / "short.py").write_text(REWARD)  # outside the working dir: must be shipped
    (project / "tiny.yaml").write_text(
        "# tiny: the quickstart, small enough for a test\n"
        "defaults:\n  - _self_\n"
        "model:\n  builder: rlreason.tasks.arithmetic:build_model\n"
        "  builder_kwargs: {hidden_size: 32, num_layers: 1, num_heads: 2, intermediate_size: 64}\n"
        "data:\n  generator: rlreason.tasks.arithmetic:write_dataset\n"
        "  generator_kwargs: {num_train: 32, num_val: 8}\n  prompts_per_step: 4\n"
        "rollout: {n: 2, max_new_tokens: 8}\n"
        f"reward:\n  functions:\n    - {{name: math_verify}}\n    - {{name: '{outside / 'short.py'}:short', weight: 0.5}}\n"
        "trainer:\n  total_steps: 2\n  progress: false\n")
    run_dir = tmp_path / "job_run"
    out = _rlreason(["submit", "--address", url, "recipe=tiny.yaml", f"trainer.output_dir={run_dir}"], env,
                    str(project))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "shipped reward file" in out.stderr and "SUCCEEDED" in out.stderr
    job_id = out.stdout.strip().splitlines()[0]
    assert job_id.startswith("rlreason-tiny-")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and "reward/short/mean" in rows[0]
    assert "run finished" in out.stdout  # the job's own output was streamed

    listed = _rlreason(["jobs", "--address", url], env, str(project), timeout=120)
    assert listed.returncode == 0 and job_id in listed.stdout and "SUCCEEDED" in listed.stdout
    logs = _rlreason(["logs", job_id, "--address", url], env, str(project), timeout=120)
    assert logs.returncode == 0 and "run finished" in logs.stdout
    stop = _rlreason(["stop", job_id, "--address", url], env, str(project), timeout=120)
    assert stop.returncode == 0 and json.loads(stop.stdout)["job"] == job_id


def test_submit_waits_for_a_just_started_heads_job_agent(monkeypatch):
    from rlreason import jobs

    monkeypatch.setattr(jobs.time, "sleep", lambda s: None)
    answers = [RuntimeError("Request failed with status code 500: No available agent to submit job")] * 2 + ["job-1"]

    class Client:  # the answers a real job server gives in its first seconds, then a submission id
        calls = 0

        def submit_job(self, **job):
            Client.calls += 1
            answer = answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer

    assert jobs.submit_when_ready(Client(), entrypoint="x") == "job-1" and Client.calls == 3
    answers[:] = [RuntimeError("401 Unauthorized")]
    with pytest.raises(RuntimeError, match="Unauthorized"):  # other refusals are not retried
        jobs.submit_when_ready(Client(), entrypoint="x")


@pytest.mark.parametrize("with_git", [True, False])
def test_the_upload_holds_what_git_would_track_and_never_key_files(tmp_path, with_git):
    work = tmp_path / "project"
    for rel, text in [("train.py", "x"), ("pkg/mod.py", "y"), (".env", "TOKEN=1"), (".ssh/id_rsa", "KEY"),
                      ("certs/server.pem", "KEY"), ("secret/notes.txt", "s"), ("data/train.jsonl", '{"prompt": "1+1", "answer": "2"}\n')]:
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_text(text)
    (work / ".gitignore").write_text("secret/\ndata/\n")
    if with_git:
        subprocess.run(["git", "init", "-q"], cwd=work, check=True)
        subprocess.run(["git", "add", "train.py", ".gitignore"], cwd=work, check=True)  # pkg/ untracked, not ignored
    staging = tmp_path / "staging"
    total, count = copy_tree(str(work), str(staging), [".gitignore"])
    staged = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
    expect = ["pkg/mod.py", "train.py"] + ([] if with_git else ["data/train.jsonl", "secret/notes.txt"])
    assert staged == sorted(expect) and count == len(expect) and total == sum((work / p).stat().st_size for p in expect)
    # a file the recipe names is shipped even when git ignores it
    cfg = load_config(["recipe=quickstart", f"data.train={work / 'data' / 'train.jsonl'}"])
    stage_config(cfg, Stager(str(work), str(staging)))
    assert (staging / cfg.data.train).read_text() == '{"prompt": "1+1", "answer": "2"}\n'


def test_a_token_over_plain_http_to_another_host_is_warned_about():
    from rlreason.jobs import plaintext_token_warning

    assert "plain http" in plaintext_token_warning("http://10.1.2.3:8265", "tok")
    assert "plain http" in plaintext_token_warning("head.example:8265", "tok")
    for quiet in [("http://127.0.0.1:8265", "tok"), ("http://localhost:8265", "tok"), ("http://[::1]:8265", "tok"),
                  ("https://head.example", "tok"), ("http://10.1.2.3:8265", None)]:
        assert plaintext_token_warning(*quiet) is None, quiet
