"""HTTP endpoint rewards against a real local HTTP server: JSON in and out, retries, timeouts."""

import gc
import json
import threading
import time
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rlreason.config.schema import RewardConfig, RewardFunctionConfig
from rlreason.rewards.http import http_reward
from rlreason.types import ScoreRequest
from rlreason.workers.reward import RewardWorker


class Judge(BaseHTTPRequestHandler):
    """/score: 1 when the response contains the ground truth; /flaky: 503 twice, then answers;
    /slow: sleeps 3 s; /bad: 400; /short: one score too few. Every request body is recorded."""

    bodies: list = []
    redirected_headers: list = []
    flaky_left = 2

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Judge.bodies.append((self.path, body))
        if self.path == "/flaky" and Judge.flaky_left > 0:
            Judge.flaky_left -= 1
            return self._send(503, {"error": "busy"})
        if self.path == "/slow":
            time.sleep(3)
        if self.path == "/bad":
            return self._send(400, {"error": "no ground_truth"})
        if self.path.startswith("/moved"):  # a redirect elsewhere; a followed one would land on /score
            Judge.redirected_headers.append(dict(self.headers))
            self.send_response(int(self.path.rsplit("/", 1)[1]))
            self.send_header("Location", "/score")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        scores = [{"score": float(str(g) in r), "len": len(r)} for r, g in zip(body["response"], body["ground_truth"])]
        self._send(200, scores[:-1] if self.path == "/short" else {"scores": scores})

    def _send(self, code, payload):
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Judge)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_post_json_retry_and_errors(server):
    Judge.bodies.clear()
    got = http_reward(url=f"{server}/score", response=["x=4", "x=5"], ground_truth=["4", "4"], level=[1, 2], step=3)
    assert got == [{"score": 1.0, "len": 3}, {"score": 0.0, "len": 3}]
    assert Judge.bodies[-1] == ("/score", {"response": ["x=4", "x=5"], "ground_truth": ["4", "4"], "level": [1, 2],
                                           "step": 3})
    Judge.flaky_left = 2
    assert http_reward(url=f"{server}/flaky", response=["4"], ground_truth=["4"], backoff_s=0.01)[0]["score"] == 1.0
    assert [p for p, _ in Judge.bodies[-3:]] == ["/flaky"] * 3  # two 503s, then the answer
    with pytest.raises(RuntimeError, match="HTTP 400"):
        http_reward(url=f"{server}/bad", response=["4"], ground_truth=["4"], backoff_s=0.01)
    assert sum(p == "/bad" for p, _ in Judge.bodies) == 1  # a 4xx is not retried
    with pytest.raises(ValueError, match="expected a list of 2"):
        http_reward(url=f"{server}/short", response=["4", "5"], ground_truth=["4", "4"])
    t0 = time.time()
    with pytest.raises(TimeoutError, match="2 attempts"):
        http_reward(url=f"{server}/slow", response=["4"], ground_truth=["4"], request_timeout_s=0.3, retries=1,
                    backoff_s=0.01)
    assert time.time() - t0 < 2.5
    with pytest.raises(RuntimeError, match="no answer after 2 attempts"):
        http_reward(url="http://127.0.0.1:9/none", response=["4"], ground_truth=["4"], retries=1, backoff_s=0.01)


def test_error_answers_leave_no_connection_open(server):
    """Every 503, 400 and redirect answer is closed, retried or not: a run against a flaky judge
    must not keep a socket per failed attempt until the garbage collector finds it."""
    Judge.flaky_left = 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert http_reward(url=f"{server}/flaky", response=["4"], ground_truth=["4"], backoff_s=0.01)[0]["score"] == 1.0
        for path in ("/bad", "/moved/302"):
            with pytest.raises(RuntimeError, match="HTTP"):
                http_reward(url=f"{server}{path}", response=["4"], ground_truth=["4"], retries=0)
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


def test_endpoint_named_in_a_recipe_scores_through_the_reward_worker(server):
    fns = [RewardFunctionConfig(f"{server}/score", 2.0), RewardFunctionConfig(f"{server}/bad", 1.0, log_as="bad")]
    worker = RewardWorker(RewardConfig(functions=fns, processes=1, timeout_s=10), answer_key="answer")
    try:
        res = worker.score(ScoreRequest(["p"] * 3, ["is 4", "is 5", "4!"], [{"answer": "4", "src": "a"}] * 3,
                                        [10, 11, 12], [3] * 3, [False] * 3, group_ids=[0, 0, 1]))
    finally:
        worker.close()
    assert res.scores.tolist() == [2.0, 0.0, 2.0]  # the failing endpoint scored 0 (on_error=zero)
    assert res.components["score/len"].tolist() == [4.0, 4.0, 2.0]
    assert len(res.errors) == 1 and "/bad on samples [10, 11, 12]" in res.errors[0] and "HTTP 400" in res.errors[0]


@pytest.mark.parametrize("code", [301, 302, 307, 308])
def test_redirects_are_not_followed_and_headers_go_nowhere_else(server, code):
    before = len(Judge.bodies)
    with pytest.raises(RuntimeError, match=f"HTTP {code}, a redirect to /score"):
        http_reward(url=f"{server}/moved/{code}", headers={"Authorization": "Bearer secret"}, retries=0,
                    response=["a"], ground_truth=["a"])
    assert [path for path, _ in Judge.bodies[before:]] == [f"/moved/{code}"]  # /score was never asked
