"""Running on a Ray cluster through the Ray Jobs API: submit, jobs, logs, stop.

``rlreason submit --address URL recipe=NAME [overrides]`` composes and validates the config here
(a typo fails before anything is uploaded), then stages a directory that Ray uploads as the job's
working dir:

    <copy of the working dir>      (--working-dir, default: the current directory): what git tracks
                                   or would track there, minus EXCLUDES and key files (SECRETS)
    _rlreason_job/<recipe>.yaml    the resolved config, with cluster.address=auto and every local
                                   file it names rewritten relative to the working dir
    _rlreason_job/files/...        named files outside the working dir (reward files, datasets,
                                   small local models), copied in

and submits ``python -m rlreason train recipe=_rlreason_job/<recipe>.yaml``, so the cluster runs
exactly the config that was validated. ``rlreason`` must be installed on the cluster's Python
(or given with ``--runtime-env`` pip/py_modules).

Authentication: Ray >= 2.52 can require a token on the job server (on by default in 2.60 for
clusters started after ``ray.init``). We send ``Authorization: Bearer <token>`` whenever a token
is found where Ray looks for it — ``RAY_AUTH_TOKEN``, the file named by ``RAY_AUTH_TOKEN_PATH``,
``~/.ray/auth_token`` — unless ``RAY_AUTH_MODE=disabled``; a rejected or missing token is
explained with what to set.
Not here: building cluster images, and autoscaler configs.
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Optional

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
EXCLUDES = [".git", ".venv", "venv", "runs", "wandb", "__pycache__", ".pytest_cache", ".mypy_cache",
            ".ruff_cache", ".tox", "node_modules", "*.egg-info", ".gitignore", ".rayignore"]
# .gitignore/.rayignore are left out so Ray ships exactly what was staged (a data file the user
# git-ignores is still a file the recipe needs).
# Never uploaded from the working dir, whatever git says: files that hold keys and credentials.
SECRETS = [".env", ".env.*", "*.pem", "*.key", "*.p12", "*.pfx", "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*",
           ".ssh", ".netrc", ".git-credentials", ".aws", ".pypirc", ".npmrc", ".docker", ".kube"]
MAX_WORKING_DIR_MB = 500  # Ray refuses larger working dirs
MAX_SHIPPED_MODEL_MB = 200  # a larger local model must already be on the cluster (shared storage)
JOB_DIR = "_rlreason_job"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


class JobError(RuntimeError):
    """A submission problem with a message that says what to do."""


# ---- the job server and its token ---------------------------------------------------------------

def job_address(address: Optional[str]) -> str:
    return address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS


def auth_token() -> Optional[str]:
    """The token Ray itself would use (same sources, same order), or None."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return None
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    if os.path.isfile(path):
        return Path(path).read_text().strip() or None
    return None


def job_client(address: Optional[str]):
    from ray.job_submission import JobSubmissionClient

    url = job_address(address)
    token = auth_token()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    warning = plaintext_token_warning(url, token)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    try:
        return JobSubmissionClient(url, headers=headers)
    except Exception as e:  # noqa: BLE001 - every failure here means "cannot talk to the job server"
        raise JobError(explain(e, url)) from None


def plaintext_token_warning(url: str, token: Optional[str]) -> Optional[str]:
    """What to say when the token would cross a network unencrypted: plain http to a host that is not this one."""
    import ipaddress
    from urllib.parse import urlparse

    parsed = urlparse(url if "://" in url else f"http://{url}")
    if not token or parsed.scheme == "https":
        return None
    host = parsed.hostname or ""
    try:
        local = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        local = False
    if local:
        return None
    return (f"the cluster token goes to {url} over plain http, readable on the network: use an https address "
            "(a TLS proxy in front of the dashboard) or an SSH tunnel to 127.0.0.1")


def explain(e: Exception, url: str) -> str:
    text = f"{type(e).__name__}: {e}"
    if "Authentication required" in text or "Missing authentication token" in text:
        return (f"the Ray cluster at {url} requires a token (Ray token authentication) and none was found. "
                "On the head node run `ray get-auth-token` and give it here with RAY_AUTH_TOKEN=<token>, "
                "RAY_AUTH_TOKEN_PATH=<file> or the file ~/.ray/auth_token.")
    if "Authentication failed" in text or "Invalid authentication token" in text:
        return (f"the Ray cluster at {url} rejected the token (from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or "
                "~/.ray/auth_token): it is not this cluster's. Get the right one on the head with "
                "`ray get-auth-token`. If the cluster runs without authentication, set RAY_AUTH_MODE=disabled.")
    if "Connection" in text or "connect" in text.lower():
        return (f"cannot reach the Ray job server at {url} ({text.splitlines()[0][:200]}). Is the head up, and is "
                "its dashboard on that host and port? (`ray start --head --dashboard-host 127.0.0.1` serves "
                "http://127.0.0.1:8265; open it to other hosts only on a trusted network.)")
    return f"the Ray job server at {url} failed: {text.splitlines()[0][:500]}"


# ---- staging the working dir --------------------------------------------------------------------

def _excluded(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in patterns)


def working_files(src: str, excludes: list[str]) -> list[str]:
    """Files of ``src`` to upload, relative to it: what git tracks or would track there (not what it
    ignores), else every file; never a name in ``excludes`` or SECRETS, at any depth."""
    import subprocess

    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=src,
                             capture_output=True, check=True).stdout.decode()
        found = [p for p in out.split("\0") if p]
    except (OSError, subprocess.CalledProcessError):  # no git, or not a repository
        found = [os.path.relpath(os.path.join(root, f), src) for root, _, files in os.walk(src) for f in files]
    patterns = excludes + SECRETS
    return sorted(p for p in found if not any(_excluded(part, patterns) for part in p.split(os.sep))
                  and os.path.isfile(os.path.join(src, p)) and not os.path.islink(os.path.join(src, p)))


def copy_tree(src: str, dst: str, excludes: list[str]) -> tuple[int, int]:
    """Copy the working files of ``src`` into ``dst`` (hard links where possible); returns (bytes, files)."""
    files = working_files(src, excludes)
    total = 0
    for rel in files:
        s, d = os.path.join(src, rel), os.path.join(dst, rel)
        os.makedirs(os.path.dirname(d), exist_ok=True)
        total += os.path.getsize(s)
        try:
            os.link(s, d)
        except OSError:  # another filesystem
            shutil.copy2(s, d)
    return total, len(files)


def _size_mb(path: str) -> float:
    if os.path.isfile(path):
        return os.path.getsize(path) / 2**20
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs) / 2**20


class Stager:
    """Maps each local path the config names to a path relative to the staged working dir."""

    def __init__(self, working_dir: str, staging: str):
        self.working_dir, self.staging = os.path.abspath(working_dir), staging
        self.shipped: list[str] = []
        self.warnings: list[str] = []
        self.uploading = ""  # what the working dir's upload holds, said before submitting

    def ship(self, path: str, what: str, max_mb: Optional[float] = None) -> str:
        full = os.path.abspath(path)
        if not os.path.exists(full):
            return path  # a hub id or a cluster-side path: used as given
        if max_mb is not None and _size_mb(full) > max_mb:
            self.warnings.append(f"{what} {full} is {_size_mb(full):.0f} MB, not shipped: it must exist at that path "
                                 "on the cluster (shared storage), or name a hub id")
            return path
        rel = os.path.relpath(full, self.working_dir)
        if not rel.startswith("..") and os.path.exists(os.path.join(self.staging, rel)):
            return rel  # inside the working dir, already staged
        rel = os.path.join(JOB_DIR, "files", f"{len(self.shipped)}_{os.path.basename(full)}")
        dst = os.path.join(self.staging, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copytree(full, dst) if os.path.isdir(full) else shutil.copy2(full, dst)
        self.shipped.append(f"{what}: {full}")
        return rel


def stage_config(cfg, stager: Stager) -> None:
    """Rewrite every local path in ``cfg`` to its staged relative path; attach to the job's cluster."""
    for f in cfg.reward.functions:
        target, sep, attr = f.name.rpartition(":")
        if sep and target.endswith(".py"):
            f.name = f"{stager.ship(target, 'reward file')}:{attr}"
    for section, key in (("data", "train"), ("data", "val"), ("eval", "data")):
        value = getattr(getattr(cfg, section), key)
        if value:
            setattr(getattr(cfg, section), key, stager.ship(value, f"{section}.{key}"))
    for key in ("path", "tokenizer"):
        value = getattr(cfg.model, key)
        if value:
            setattr(cfg.model, key, stager.ship(value, f"model.{key}", MAX_SHIPPED_MODEL_MB))
    cfg.cluster.address = "auto"  # the job's driver joins the cluster it runs on


def stage(cfg, working_dir: str, excludes: list[str]) -> tuple[str, str, Stager]:
    """Build the staged working dir; returns (its path, the recipe path inside it, the stager)."""
    from rlreason.config import to_yaml

    staging = tempfile.mkdtemp(prefix="rlreason-job-")
    total, count = copy_tree(working_dir, staging, EXCLUDES + excludes)
    size = total / 2**20
    if size > MAX_WORKING_DIR_MB:
        shutil.rmtree(staging, ignore_errors=True)
        raise JobError(f"the working dir {working_dir} is {size:.0f} MB, more than Ray's {MAX_WORKING_DIR_MB} MB: "
                       "leave out large folders with --exclude PATTERN or pick a smaller --working-dir")
    stager = Stager(working_dir, staging)
    stager.uploading = f"uploading {count} files ({size:.1f} MB) of {os.path.abspath(working_dir)}: what git " \
                       f"tracks or would track there, without {', '.join(SECRETS[:3])} and other key files"
    stage_config(cfg, stager)
    name = os.path.splitext(os.path.basename(cfg.recipe))[0] or "job"
    recipe = os.path.join(JOB_DIR, f"{name}.yaml")
    os.makedirs(os.path.join(staging, JOB_DIR), exist_ok=True)
    with open(os.path.join(staging, recipe), "w") as f:
        f.write(f"# {name}: resolved and validated by `rlreason submit` on {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        f.write(to_yaml(cfg))
    return staging, recipe, stager


def runtime_env(staging: str, excludes: list[str], extra_file: Optional[str]) -> dict:
    env: dict = {}
    if extra_file:
        import yaml

        with open(extra_file) as f:
            env = yaml.safe_load(f) or {}
        if "working_dir" in env:
            raise JobError(f"{extra_file} sets working_dir; use --working-dir instead (rlreason stages it)")
    env["working_dir"] = staging
    env["excludes"] = list(env.get("excludes", [])) + excludes
    env.setdefault("env_vars", {}).setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


# ---- the commands -------------------------------------------------------------------------------

def submit(argv: list[str]) -> int:
    from rlreason.config import load_config
    from rlreason.config.validate import validate

    p = argparse.ArgumentParser(prog="rlreason submit", description="Run `rlreason train` on a Ray cluster.")
    p.add_argument("--address", help=f"job server URL (default: $RAY_ADDRESS or {DEFAULT_ADDRESS})")
    p.add_argument("--no-wait", action="store_true", help="print the job id and return")
    p.add_argument("--runtime-env", help="YAML/JSON file with extra Ray runtime_env (pip, env_vars, ...)")
    p.add_argument("--working-dir", default=".", help="directory shipped with the job (default: .)")
    p.add_argument("--exclude", action="append", default=[], help="name pattern left out of the working dir")
    p.add_argument("--job-id", help="submission id (default: rlreason-<recipe>-<time>)")
    args, rest = p.parse_known_args(argv)
    cfg = load_config(rest)  # ConfigError reaches the CLI, which prints it
    validate(cfg)
    staging, recipe, stager = stage(cfg, args.working_dir, args.exclude)
    try:
        client = job_client(args.address)
        job_id = args.job_id or f"rlreason-{os.path.splitext(os.path.basename(recipe))[0]}-" \
                                f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
        try:
            job_id = submit_when_ready(client, entrypoint=f"python -m rlreason train recipe={recipe}",
                                       runtime_env=runtime_env(staging, args.exclude, args.runtime_env),
                                       submission_id=job_id, metadata={"rlreason": " ".join(rest)})
        except Exception as e:  # noqa: BLE001 - auth, connection and server errors all get explained
            raise JobError(explain(e, job_address(args.address))) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(stager.uploading, file=sys.stderr)
    for line in stager.shipped:
        print(f"shipped {line}", file=sys.stderr)
    for line in stager.warnings:
        print(f"warning: {line}", file=sys.stderr)
    if not cfg.trainer.output_dir or not os.path.isabs(cfg.trainer.output_dir):
        print("warning: trainer.output_dir is not an absolute path: the run dir is written inside the job's "
              "working dir on the head node; set it to shared storage to keep checkpoints", file=sys.stderr)
    print(job_id, flush=True)
    if args.no_wait:
        print(f"follow it: rlreason logs {job_id} --follow; stop it: rlreason stop {job_id}", file=sys.stderr)
        return 0
    return follow(client, job_id)


def submit_when_ready(client, wait_s: float = 120.0, **job) -> str:
    """``client.submit_job(**job)``, retried while a just-started head has no job agent yet.

    The job server answers (list_jobs works) some seconds before the head's agent accepts jobs;
    until then it refuses with "No available agent to submit job".
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return client.submit_job(**job)
        except Exception as e:  # noqa: BLE001 - only the agent-not-ready refusal is retried
            if "No available agent" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(2)


def follow(client, job_id: str) -> int:
    """Stream the job's logs until it ends; the exit code is 0 only if it succeeded."""
    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            print(chunk, end="", flush=True)

    try:
        asyncio.run(tail())
        while (status := str(client.get_job_status(job_id)).split(".")[-1]) not in TERMINAL:
            time.sleep(1)
    except KeyboardInterrupt:
        print(f"\nstopped following; the job keeps running (rlreason stop {job_id})", file=sys.stderr)
        return 130
    info = client.get_job_info(job_id)
    print(f"job {job_id}: {status}" + (f" ({info.message})" if status != "SUCCEEDED" and info.message else ""),
          file=sys.stderr)
    return 0 if status == "SUCCEEDED" else 1


def _parser(prog: str, with_job: bool) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog)
    if with_job:
        p.add_argument("job_id")
    p.add_argument("--address", help=f"job server URL (default: $RAY_ADDRESS or {DEFAULT_ADDRESS})")
    return p


def list_jobs(argv: list[str]) -> int:
    args = _parser("rlreason jobs", False).parse_args(argv)
    client = job_client(args.address)
    try:
        jobs = client.list_jobs()
    except Exception as e:  # noqa: BLE001
        raise JobError(explain(e, job_address(args.address))) from None
    for j in sorted(jobs, key=lambda j: j.start_time or 0):
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime((j.start_time or 0) / 1000))
        print(f"{j.submission_id or j.job_id:<44} {str(j.status).split('.')[-1]:<10} {started}  "
              f"{(j.metadata or {}).get('rlreason', j.entrypoint)}")
    return 0


def logs(argv: list[str]) -> int:
    p = _parser("rlreason logs", True)
    p.add_argument("--follow", "-f", action="store_true", help="stream until the job ends")
    args = p.parse_args(argv)
    client = job_client(args.address)
    try:
        if args.follow:
            return follow(client, args.job_id)
        print(client.get_job_logs(args.job_id), end="")
    except JobError:
        raise
    except Exception as e:  # noqa: BLE001
        raise JobError(explain(e, job_address(args.address))) from None
    return 0


def stop(argv: list[str]) -> int:
    args = _parser("rlreason stop", True).parse_args(argv)
    client = job_client(args.address)
    try:
        stopped = client.stop_job(args.job_id)
    except Exception as e:  # noqa: BLE001
        raise JobError(explain(e, job_address(args.address))) from None
    print(json.dumps({"job": args.job_id, "stop_requested": bool(stopped)}))
    return 0
