"""Small stand-ins for vLLM's objects (LLM, SamplingParams, RequestOutput, metrics), for the tests of our
own translation logic around them (rollout/vllm_engine.py, the drafter's vLLM path)."""

from dataclasses import dataclass, field
from types import SimpleNamespace

from rlreason.rollout import vllm_engine as ve

EOS, PAD = 1, 0


class FakeSamplingParams:
    def __init__(self, **kw):
        self.kw = kw


@dataclass
class FakeLogprob:
    logprob: float


@dataclass
class FakeCompletion:
    token_ids: list
    logprobs: list
    finish_reason: str
    text: str


@dataclass
class FakeLLM:
    """Answers prompt p's j-th sample with j+1 tokens (the last is EOS when j is even: finish "stop")."""

    calls: list = field(default_factory=list)
    drafts: float = 0.0
    accepted_pos: list = field(default_factory=lambda: [0.0, 0.0, 0.0])

    def generate(self, prompts, params, use_tqdm=True):
        outs = []
        for p, sp in zip(prompts, params):
            self.calls.append(("generate", p["prompt_token_ids"], sp.kw))
            comps = []
            for j in range(sp.kw["n"]):
                toks = [10 + j] * j + [EOS if j % 2 == 0 else 99]
                lps = [{t: FakeLogprob(-0.1 * (i + 1)), 77: FakeLogprob(-5.0)} for i, t in enumerate(toks)]
                comps.append(FakeCompletion(toks, lps, "stop" if j % 2 == 0 else "length", f"s{j}"))
            outs.append(SimpleNamespace(request_id=str(len(outs)), outputs=comps))
        self.drafts += 10  # 10 verify rows with K = 3: 6 accepted at position 1, 3 at 2, 1 at 3
        self.accepted_pos = [a + b for a, b in zip(self.accepted_pos, [6, 3, 1])]
        return outs

    def get_metrics(self):
        C = lambda n, v: SimpleNamespace(name=n, value=v)  # noqa: E731
        return [C("vllm:spec_decode_num_drafts", self.drafts), C("vllm:spec_decode_num_draft_tokens", 3 * self.drafts),
                C("vllm:spec_decode_num_accepted_tokens", sum(self.accepted_pos)),
                SimpleNamespace(name="vllm:spec_decode_num_accepted_tokens_per_pos", values=list(self.accepted_pos)),
                SimpleNamespace(name="vllm:iteration_tokens_total", count=self.drafts / 2, sum=0.0),
                C("vllm:prompt_tokens", 5.0)]

    def __getattr__(self, name):  # start_weight_update, update_weights, sleep, ... are recorded
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *a, **kw: self.calls.append((name, a, kw))


def engine(method="eagle", k=3, **kw):
    tok = SimpleNamespace(pad_token_id=PAD, eos_token_id=EOS)
    settings = ve.VLLMSettings(model="m", method=method, k=k, draft_model="d", stage_device="cpu", **kw)
    return ve.VLLMEngine(FakeLLM(), tok, settings, FakeSamplingParams)


