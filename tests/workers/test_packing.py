"""Packed micro-batches against padded ones: the layout, log-probs and gradients (fp32, 1e-5), and the
start-up check that refuses a model whose attention crosses packed sequences."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from rlreason.kernels.lm_head import model_logprobs_entropy
from rlreason.types import SequenceBatch
from rlreason.workers.packing import first_fit, model_inputs, pack, packing_is_exact

VOCAB = 53


def batch(prompts: list[list[int]], responses: list[list[int]]) -> SequenceBatch:
    """Left-padded prompts, right-padded responses (pad id 0), as the rollout delivers them."""
    p, t = max(map(len, prompts)), max(map(len, responses))
    ids, att = torch.zeros(len(prompts), p + t, dtype=torch.long), torch.zeros(len(prompts), p + t, dtype=torch.long)
    rmask = torch.zeros(len(prompts), t)
    for i, (q, r) in enumerate(zip(prompts, responses)):
        ids[i, p - len(q):p], ids[i, p:p + len(r)] = torch.tensor(q), torch.tensor(r)
        att[i, p - len(q):p + len(r)] = 1
        rmask[i, :len(r)] = 1
    return SequenceBatch(ids, att, rmask, p)


def random_batch(seed: int, n: int = 7) -> SequenceBatch:
    g = torch.Generator().manual_seed(seed)
    rand = lambda lo, hi: int(torch.randint(lo, hi, (1,), generator=g))  # noqa: E731
    prompts = [torch.randint(1, VOCAB, (rand(2, 6),), generator=g).tolist() for _ in range(n)]
    responses = [torch.randint(1, VOCAB, (rand(1, 12),), generator=g).tolist() for _ in range(n)]
    responses[0] = torch.randint(1, VOCAB, (14,), generator=g).tolist()  # one long row: the others pack beside it
    return batch(prompts, responses)


def models():
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, attn_implementation="eager"))
    qwen = Qwen2ForCausalLM(Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, attn_implementation="sdpa"))
    return {"llama-eager": llama, "qwen2-sdpa": qwen}


def test_first_fit_places_longest_first_without_overlap():
    lengths = [9, 2, 5, 4, 7, 1]
    place, fill = first_fit(lengths, width=9)
    assert place[0] == (0, 0) and place[4] == (1, 0)  # 9 fills row 0; 7 opens row 1
    spans = sorted((r, off, off + n) for (r, off), n in zip(place, lengths))
    for (r1, _, e1), (r2, s2, _) in zip(spans, spans[1:]):
        assert r1 != r2 or e1 <= s2
    assert place == [(0, 0), (1, 7), (2, 0), (2, 5), (1, 0), (3, 0)]  # 28 tokens in rows of 9: 4 rows is optimal
    assert fill == [9, 9, 9, 1]
    assert all(off + n <= 9 for (_, off), n in zip(place, lengths))


def test_packed_layout_restarts_positions_and_points_at_each_target():
    seqs = random_batch(0)
    packed = pack(seqs)
    assert packed is not None and len(packed.input_ids) < len(seqs)
    p = seqs.prompt_width
    for i in range(len(seqs)):
        real = seqs.input_ids[i, seqs.attention_mask[i].bool()]
        for j in range(int(seqs.response_mask[i].sum())):
            r, c = packed.rows[i, j], packed.cols[i, j]
            assert packed.input_ids[r, c + 1] == seqs.input_ids[i, p + j]  # the next token is the target
            assert packed.position_ids[r, c + 1] == len(real) - int(seqs.response_mask[i].sum()) + j
    starts = (packed.position_ids == 0).sum()
    assert starts >= len(seqs)  # every sequence (and any trailing padding) starts at position 0


def test_no_row_saved_means_no_packing():
    seqs = batch([[1, 2], [3, 4]], [[5, 6, 7], [8, 9, 10]])
    assert pack(seqs) is None
    assert model_inputs(seqs, "cpu", packing=True)[1] is None


@pytest.mark.parametrize("name", ["llama-eager", "qwen2-sdpa"])
@pytest.mark.parametrize("impl", ["auto", "naive"])
def test_packed_logprobs_and_gradients_equal_padded(name, impl):
    model = models()[name]
    seqs = random_batch(1)
    mask = seqs.response_mask
    targets = seqs.input_ids[:, seqs.prompt_width:]
    results = []
    for packing in (False, True):
        model.zero_grad()
        inputs, where = model_inputs(seqs, "cpu", packing)
        assert (where is not None) == packing
        lp, ent = model_logprobs_entropy(model, inputs, targets, seqs.prompt_width - 1, 1.0, True, impl=impl,
                                         where=where)
        ((lp * mask).sum() + (ent * mask).sum() * 0.1).backward()
        results.append((lp * mask, ent * mask, [p.grad.clone() for p in model.parameters()]))
    (lp_a, ent_a, g_a), (lp_b, ent_b, g_b) = results
    torch.testing.assert_close(lp_b, lp_a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent_b, ent_a, atol=1e-5, rtol=1e-5)
    for a, b in zip(g_a, g_b):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["llama-eager", "qwen2-sdpa"])
def test_startup_check_accepts_models_that_keep_sequences_apart(name):
    assert packing_is_exact(models()[name].eval(), "cpu")


def test_startup_check_refuses_a_model_that_mixes_packed_sequences():
    model = models()["llama-eager"].eval()

    def ignores_positions(input_ids, position_ids=None, use_cache=False):  # one causal sequence per row
        return model(input_ids=input_ids, use_cache=use_cache)

    ignores_positions.parameters = model.parameters
    assert not packing_is_exact(ignores_positions, "cpu")
