"""The real command line: errors are useful, and a 2-step run with two DeepSpeed learners works."""

import json
import os
import subprocess
import sys
import tempfile

import pytest

REQUIRED_METRICS = ["step", "reward/mean", "correct/mean", "response_length/mean", "time/step", "time/generate",
                    "time/score", "time/update", "time/sync", "rollout/tokens_per_s", "loss", "kl", "entropy",
                    "clip_frac", "grad_norm"]


def rlreason(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "rlreason", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_typo_in_a_key_fails_fast_with_a_suggestion():
    out = rlreason("train", "recipe=quickstart", "rollout.temprature=0.5")
    assert out.returncode == 2
    assert "rollout.temperature" in out.stderr


def test_typo_in_a_recipe_lists_recipes():
    out = rlreason("train", "recipe=quikstart")
    assert out.returncode == 2 and "quickstart" in out.stderr


def test_unknown_command():
    out = rlreason("trian")
    assert out.returncode == 2 and "train" in out.stderr


def test_list_shows_every_registry():
    out = rlreason("list")
    assert out.returncode == 0
    for name in ("grpo", "ppo_clip", "math_verify", "quickstart"):
        assert name in out.stdout


@pytest.mark.slow
def test_two_steps_with_two_deepspeed_learners(tmp_path):
    run = tmp_path / "run"
    out = rlreason("train", "recipe=quickstart", "learner.world_size=2", "trainer.total_steps=2",
                   "trainer.sft.steps=2", "data.prompts_per_step=4", "rollout.n=4", "rollout.max_new_tokens=24",
                   "algorithm.kl_coef=0.01", "rollout.temperature=0.8", f"trainer.output_dir={run}",
                   "trainer.progress=false")
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for key in REQUIRED_METRICS:
        assert key in rows[0], key
    assert rows[0]["grad_norm"] is not None and rows[0]["grad_norm"] >= 0
    config = (run / "config.yaml").read_text()
    assert "world_size: 2" in config and "kl_coef: 0.01" in config and "temperature: 0.8" in config
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert samples and {"prompt", "response", "reward", "ground_truth"} <= set(samples[0])
    assert len((run / "warmup.jsonl").read_text().splitlines()) == 2


@pytest.mark.slow
def test_local_model_and_parquet_data_with_custom_columns(tmp_path, tiny_model_dir):
    """model.path + data.train naming local files (what a hub id resolves to), custom keys, a user reward."""
    import datasets

    rows = [{"question": f"Q: {i}+1 =\nA:", "gold": str(i + 1), "level": 7} for i in range(8)]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "train.parquet"))
    reward = tmp_path / "level_reward.py"
    reward.write_text("def level(*, level, ground_truth, **kw):\n    return {'score': 0.0, 'level': float(level)}\n")
    recipe = tmp_path / "mine.yaml"
    recipe.write_text(
        "# my recipe\n"
        f"model:\n  path: {tiny_model_dir}\n"
        f"data:\n  train: {tmp_path / 'train.parquet'}\n  prompt_key: question\n  answer_key: gold\n"
        "  prompts_per_step: 4\n"
        "rollout:\n  n: 2\n  max_new_tokens: 8\n"
        f"reward:\n  functions:\n    - {{name: math_verify}}\n    - {{name: '{reward}:level', weight: 0.0}}\n"
        "trainer:\n  total_steps: 1\n  loggers: [jsonl]\n")
    run = tmp_path / "run"
    out = rlreason("train", f"recipe={recipe}", f"trainer.output_dir={run}")
    assert out.returncode == 0, out.stderr[-3000:]
    (row,) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert row["reward/level/level/mean"] == 7.0  # the dataset column reached the user's function
    assert "reward/math_verify/mean" in row and row["reward/errors"] == 0


def test_a_missing_column_is_named_before_training(tmp_path, tiny_model_dir):
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"question": "1+1", "gold": "2"}) + "\n" + json.dumps({"question": "2+2"}) + "\n")
    out = rlreason("train", "recipe=quickstart", f"model.path={tiny_model_dir}", f"data.train={data}",
                   "data.prompt_key=question", "data.answer_key=gold", f"trainer.output_dir={tmp_path / 'run'}")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "train.jsonl" in out.stderr and "row 1" in out.stderr and "'gold'" in out.stderr


@pytest.mark.parametrize("command", ["train", "eval"])
def test_help_prints_usage_and_the_config_sections(command):
    out = rlreason(command, "--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"usage: rlreason {command}") and "config error" not in out.stderr
    for text in ("config sections:", "rlreason/config/schema.py", "trainer ", "rollout "):
        assert text in out.stdout, text


def test_a_hub_model_that_cannot_be_reached_fails_at_once_in_one_line(tmp_path):
    # nothing listens on port 1 of loopback: the "hub" refuses at once, like a machine without network
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:1", "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "rlreason", "train", "recipe=quickstart", "model.builder=null",
                          "model.path=Qwen/Qwen2.5-0.5B-Instruct", f"trainer.output_dir={tmp_path / 'run'}"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "model.path='Qwen/Qwen2.5-0.5B-Instruct'" in out.stderr and "local copy" in out.stderr


@pytest.mark.slow
def test_ctrl_c_prints_the_resume_command_and_leaves_no_ray_process(tmp_path):
    import signal
    import time

    ray_tmp = tempfile.mkdtemp(prefix="rlrint", dir="/tmp")  # short: Ray's socket paths must fit 107 chars
    run = tmp_path / "run"
    args = ["train", "recipe=quickstart", "trainer.sft.steps=2000", "data.prompts_per_step=4", "rollout.n=2",
            f"trainer.output_dir={run}"]
    # a terminal's Ctrl-C: SIGINT to the whole foreground process group (here: a new session)
    proc = subprocess.Popen([sys.executable, "-m", "rlreason", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, env={**os.environ, "RAY_TMPDIR": ray_tmp},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while not (run / "warmup.jsonl").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(1)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    assert f"rlreason train recipe=quickstart trainer.sft.steps=2000 data.prompts_per_step=4 rollout.n=2 " \
           f"trainer.output_dir={run} trainer.resume=auto" in err
    time.sleep(5)
    left = [p for p in os.listdir("/proc") if p.isdigit() and _environ_mentions(p, ray_tmp)]
    assert not left, f"Ray processes left behind: {left}"


def _environ_mentions(pid: str, text: str) -> bool:
    """Whether the process was started with ``text`` in its environment (every Ray process of the run is)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return text.encode() in f.read()
    except OSError:
        return False


@pytest.mark.slow
def test_a_run_whose_rewards_score_nothing_stops_and_says_why(tmp_path):
    reward = tmp_path / "nothing.py"
    reward.write_text("def nothing(**kw):\n    return None\n")
    run = tmp_path / "run"
    out = rlreason("train", "recipe=quickstart", f"reward.functions=[{{name: '{reward}:nothing'}}]",
                   "reward.max_unscored_steps=2", "trainer.total_steps=5", "trainer.sft.steps=1",
                   "data.prompts_per_step=2", "rollout.n=2", "rollout.max_new_tokens=8", f"trainer.output_dir={run}",
                   "trainer.progress=false")
    assert out.returncode == 1, out.stderr[-3000:]
    assert "run stopped: 2 steps in a row without a single reward score" in out.stderr
    assert "Traceback" not in out.stderr
    assert out.stdout.count("no response got a reward score") == 2
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1]  # the step that stops the run is not logged as trained


LISTENERS_REWARD = '''
import json, os

def _listening():
    """(address, port, inode) of every listening TCP socket, from /proc/net/tcp and tcp6."""
    out = []
    for name in ("tcp", "tcp6"):
        with open(f"/proc/net/{name}") as f:
            for line in list(f)[1:]:
                cols = line.split()
                if cols[3] != "0A":  # LISTEN
                    continue
                addr, port = cols[1].split(":")
                raw = bytes.fromhex(addr)
                if name == "tcp":
                    host = ".".join(str(b) for b in raw[::-1])
                else:  # four little-endian 32-bit words
                    flat = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                    text = flat.hex()
                    if text.startswith("00000000000000000000ffff"):
                        host = "::ffff:" + ".".join(str(b) for b in flat[12:])
                    else:
                        host = {"0" * 31 + "1": "::1", "0" * 32: "::"}.get(text, text)
                out.append((host, int(port, 16), cols[9]))
    return out

def record(*, marker, out, **kw):
    """Score 1; on the first call, write the listening sockets of every process started with ``marker``."""
    if os.path.exists(out):
        return 1.0
    owners = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if marker.encode() not in f.read():
                    continue
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    owners[link[8:-1]] = pid
        except OSError:
            continue
    rows = [(h, p, owners[i], open(f"/proc/{owners[i]}/cmdline").read().replace("\\0", " ")[:80])
            for h, p, i in _listening() if i in owners]
    with open(out, "w") as f:
        json.dump(rows, f)
    return 1.0
'''


@pytest.mark.slow
def test_a_local_run_listens_on_loopback_only(tmp_path):
    marker = f"RLREASON_SOCKET_TEST={tmp_path.name}"
    reward, found = tmp_path / "listeners.py", tmp_path / "listeners.json"
    reward.write_text(LISTENERS_REWARD)
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", marker.split("=")[0]: marker.split("=")[1]}
    out = subprocess.run([sys.executable, "-m", "rlreason", "train", "recipe=quickstart", "trainer.total_steps=1",
                          "trainer.sft.steps=1", "data.prompts_per_step=2", "rollout.n=2", "rollout.max_new_tokens=8",
                          "learner.world_size=2",
                          f"reward.functions=[{{name: '{reward}:record', kwargs: {{marker: '{marker}', out: '{found}'}}}}]",
                          f"trainer.output_dir={run}", "trainer.progress=false"],
                         capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads(found.read_text())
    assert len({row[2] for row in rows}) >= 4, rows  # driver, GCS, raylet, actors: the run was up
    exposed = [r for r in rows if r[0] not in ("127.0.0.1", "::ffff:127.0.0.1", "::1")]
    assert not exposed, f"listening beyond loopback: {exposed}"
    assert any("LearnerWorker" in r[3] for r in rows), rows  # the learners' rendezvous store, on loopback


def test_a_read_only_output_dir_fails_in_one_line(tmp_path):
    from shared_builders import tmpfs

    with tmpfs(tmp_path / "ro", "ro,size=1m") as mount:
        out = rlreason("train", "recipe=quickstart", f"trainer.output_dir={mount / 'run'}")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert out.stderr.strip() == (f"rlreason train: config error: trainer.output_dir={mount / 'run'}: cannot write "
                                  "there (Read-only file system); give a directory you can write to")


@pytest.mark.slow
def test_a_dead_learner_ends_the_run_with_what_died_and_the_resume_command(tmp_path):
    import signal
    import time

    run = tmp_path / "run"
    args = ["train", "recipe=quickstart", "trainer.sft.steps=5000", "data.prompts_per_step=2", "rollout.n=2",
            f"trainer.output_dir={run}", "trainer.progress=false"]
    proc = subprocess.Popen([sys.executable, "-m", "rlreason", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline = time.time() + 300
    while not (run / "warmup.jsonl").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(1)
    learners = [p for p in os.listdir("/proc") if p.isdigit() and _cmdline(p).startswith("ray::LearnerWorker")
                and os.getsid(int(p)) != os.getsid(0) and _child_of_session(p, proc.pid)]
    assert learners, "no learner process found"
    os.kill(int(learners[0]), signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert "rlreason train: a LearnerWorker actor died (" in err
    assert f"trainer.output_dir={run} trainer.resume=auto" in err


def _cmdline(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace").replace("\0", " ")
    except OSError:
        return ""


def _child_of_session(pid: str, sid: int) -> bool:
    """Whether ``pid`` descends from a process of session ``sid`` (Ray workers start their own sessions)."""
    seen = 0
    while pid not in ("0", "1") and seen < 50:
        try:
            if os.getsid(int(pid)) == sid:
                return True
            with open(f"/proc/{pid}/stat") as f:
                pid = f.read().rsplit(")", 1)[1].split()[1]
        except (OSError, IndexError):
            return False
        seen += 1
    return False


def test_a_dead_cluster_address_fails_at_once_naming_it(tmp_path):
    import time

    for address in ("127.0.0.1:1", "ray://127.0.0.1:1"):
        start = time.time()
        out = rlreason("train", "recipe=quickstart", f"cluster.address={address}", f"trainer.output_dir={tmp_path / 'r'}",
                       timeout=120)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
        assert f"cluster.address={address}: nothing answers at 127.0.0.1:1" in out.stderr
        assert time.time() - start < 60


@pytest.mark.slow
def test_actor_cpus_no_node_has_fail_at_once(tmp_path):
    out = rlreason("train", "recipe=quickstart", "cluster.actor_cpus=100", f"trainer.output_dir={tmp_path / 'r'}",
                   timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert "cluster.actor_cpus=100 is more than any node of the cluster has" in out.stderr
