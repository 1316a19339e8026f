"""The shared inference module: a model folder loaded with what it writes, completions split and checked."""

import pytest

from secondthought.chains.edits import compute_edits, serialize
from secondthought.chains.text import TGT, completion, prompt
from secondthought.decoding.policy import Policy, SamplingParams
from secondthought.runs import ModelInfo, write_model_info


@pytest.fixture(scope="module")
def folder(tokenizer, tmp_path_factory):
    from secondthought.models.lm import build_base_model

    return build_base_model("tiny-llama", tokenizer, tmp_path_factory.mktemp("inference") / "m")


def test_outputs_are_split_and_their_chains_checked_against_the_source(folder, tokenizer):
    policy = Policy.load(folder)
    source, target = "Tom shoves people out of the line.", "Tom asks people to let him go first."
    written = completion(serialize(compute_edits(source, target)), target)
    ids = tokenizer(written, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    out = policy.output(ids, source)
    assert out.text == written and out.target == target and out.chain_text + TGT + out.target == written
    assert out.verdict.applies and out.verdict.consistent
    assert not policy.output(ids, "A different source entirely.").verdict.applies
    assert policy.output(ids).verdict is None  # no source given, nothing to check against

    prompts = [tokenizer(prompt("Be kind.", s), add_special_tokens=False).input_ids for s in (source, "Maya yells.")]
    params = SamplingParams(max_new_tokens=6, temperature=0, batch_size=2)
    outs = policy.complete(prompts, [source, "Maya yells."], params)
    assert [o.text for o in outs] == [policy.output(c).text for c in policy.sample(prompts, params)]
    assert all(o.verdict is not None for o in outs)


def test_a_model_that_writes_no_chains_gets_no_verdict(folder, tokenizer, tmp_path):
    import shutil

    baseline = tmp_path / "targets-only"
    shutil.copytree(folder, baseline)
    write_model_info(baseline, ModelInfo(stage="sft", writes_chains=False))
    policy = Policy.load(baseline)
    assert policy.info.writes_chains is False
    ids = tokenizer(TGT + "Tom asks.", add_special_tokens=False).input_ids
    assert policy.output(ids, "Tom shoves.").verdict is None and policy.output(ids).target == "Tom asks."


def test_batched_scoring_equals_one_row_at_a_time(folder, tokenizer):
    """mean_nll left-pads rows of different lengths and keeps only the texts' logits: the same numbers as a
    plain forward of each row alone (an empty context scores the text from its second token)."""
    import math

    import torch

    from secondthought.decoding.policy import mean_nll

    model = Policy.load(folder).model

    def encode(text):
        return tokenizer(text, add_special_tokens=False).input_ids

    contexts = [encode(c) for c in ("Be kind to strangers.", "", "Help.", "Do not lie to your friends about money.")]
    texts = [encode(t) for t in (" Tom asks the man.", " Maya waits her turn in the line.", " Ok.", " He tells them.")]

    def alone(context, text):
        full = torch.tensor([context + text])
        with torch.no_grad():
            logits = model(full).logits[0]
        start = max(len(context), 1)
        return float(torch.nn.functional.cross_entropy(logits[start - 1 : -1], full[0, start:]))

    expected = [alone(c, t) for c, t in zip(contexts, texts)]
    seen = []
    got = mean_nll(model, contexts, texts, tokenizer.pad_token_id, batch_size=3, done=seen.append)
    assert got == pytest.approx(expected, abs=1e-4) and not any(math.isnan(v) for v in got)
    assert seen == [3, 4]


def test_a_temperature_near_zero_samples_the_most_likely_token_instead_of_nan():
    """Found by the schemathesis fuzz: temperature 5e-324 (valid in [0, 2]) made the scaled logits inf and the
    softmax NaN, a 500."""
    import torch

    from secondthought.decoding.policy import SamplingParams, next_tokens

    logits = torch.tensor([[5.0, 3.0, float("-inf")], [1.0, 2.0, 0.5]])
    for temperature in (5e-324, 1e-40, 1e-6):
        chosen = next_tokens(logits, SamplingParams(temperature=temperature, top_p=1e-300), torch.Generator())
        assert chosen.tolist() == [0, 1]
