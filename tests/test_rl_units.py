"""The RL stage's pure parts against values worked out by hand: PPO math, batching, sampling, placement."""

import math

import numpy as np
import pytest
import torch

from secondthought.chains.edits import compute_edits, serialize
from secondthought.chains.formats import TOKENS
from secondthought.chains.text import check_completion, completion
from secondthought.config import ConfigError, RLConfig
from secondthought.decoding.policy import SamplingParams, next_tokens, sample
from secondthought.rl import ppo
from secondthought.rl.experience import Sample, collate, padded, shards, unpadded
from secondthought.rl.placement import plan as placement
from secondthought.rl.prompts import Prompts
from secondthought.rl.reward import Scored, discriminator_pair, reverse_negative, validity

T = torch.tensor


def test_masked_mean_and_whiten_ignore_padding():
    values, mask = T([[1.0, 2.0, 3.0, 100.0]]), T([[1, 1, 1, 0]])
    assert float(ppo.masked_mean(values, mask)) == pytest.approx(2.0)
    whitened = ppo.masked_whiten(values, mask)
    s = math.sqrt(2 / 3)
    assert whitened.tolist()[0] == pytest.approx([-1 / s, 0.0, 1 / s, 0.0], rel=1e-5)


def test_kl_estimators():
    logp, ref = T([-1.0]), T([-1.3])
    assert float(ppo.kl_penalty(logp, ref, "k1")) == pytest.approx(0.3)
    assert float(ppo.kl_penalty(logp, ref, "k2")) == pytest.approx(0.045)
    assert float(ppo.kl_penalty(logp, ref, "k3")) == pytest.approx(math.exp(-0.3) - 1 + 0.3)
    with pytest.raises(ValueError, match="k4"):
        ppo.kl_penalty(logp, ref, "k4")


def test_token_rewards_put_the_score_on_the_last_generated_token():
    rewards = ppo.token_rewards(T([2.0, 1.0]), T([[0.1, 0.2, 0.3], [0.4, 0.0, 0.0]]), T([[1, 1, 0], [1, 0, 0]]), 0.5)
    assert rewards.tolist() == [pytest.approx([-0.05, 1.9, 0.0]), pytest.approx([0.8, 0.0, 0.0])]


def test_gae_by_hand():
    rewards, values, mask = T([[0.0, 0.0, 1.0]]), T([[0.5, 0.5, 0.5]]), T([[1, 1, 1]])
    adv, ret = ppo.gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert adv.tolist()[0] == pytest.approx([0.5, 0.5, 0.5]) and ret.tolist()[0] == pytest.approx([1, 1, 1])
    adv, ret = ppo.gae(rewards, values, mask, gamma=1.0, lam=0.5)
    assert adv.tolist()[0] == pytest.approx([0.125, 0.25, 0.5]) and ret.tolist()[0] == pytest.approx([0.625, 0.75, 1.0])
    # a padded row: the value after its last token is 0, whatever sits in the padding
    adv, ret = ppo.gae(T([[0.0, 1.0, 0.0]]), T([[0.5, 0.5, 9.0]]), T([[1, 1, 0]]), gamma=0.9, lam=1.0)
    # by hand: A1 = 1 - 0.5 = 0.5; A0 = (0 + 0.9 * 0.5 - 0.5) + 0.9 * 1.0 * 0.5 = 0.4
    assert adv.tolist()[0] == pytest.approx([0.4, 0.5, 0.0])
    assert ret.tolist()[0] == pytest.approx([0.9, 1.0, 0.0])


def test_clipped_policy_loss_and_clip_fraction():
    old = T([[0.0, 0.0, 0.0]])
    new = torch.log(T([[1.5, 0.5, 0.5]]))
    adv, mask = T([[1.0, 1.0, -1.0]]), T([[1, 1, 1]])
    loss, clip_fraction, approx_kl = ppo.policy_loss(new, old, adv, mask, clip=0.2)
    # per token: max(-1.5, -1.2) = -1.2 (clipped); max(-0.5, -0.8) = -0.5; max(0.5, 0.8) = 0.8 (clipped)
    assert float(loss) == pytest.approx((-1.2 - 0.5 + 0.8) / 3)
    assert float(clip_fraction) == pytest.approx(2 / 3)
    assert float(approx_kl) == pytest.approx(float((0.5 * torch.log(T([1.5, 0.5, 0.5])) ** 2).mean()))
    same, frac, _ = ppo.policy_loss(old, old, adv, mask, clip=0.2)
    assert float(same) == pytest.approx(-1 / 3) and float(frac) == 0


def test_value_loss_takes_the_worse_of_clipped_and_unclipped():
    values, old, returns, mask = T([[1.0, 0.1]]), T([[0.0, 0.0]]), T([[2.0, 0.0]]), T([[1, 0]])
    assert float(ppo.value_loss(values, old, returns, mask, clip=0.2)) == pytest.approx(0.5 * (0.2 - 2.0) ** 2)
    assert float(ppo.value_loss(values, old, returns, mask, clip=None)) == pytest.approx(0.5)


def test_entropy_and_logprobs():
    logits = torch.zeros(1, 1, 4)
    assert float(ppo.entropy_from_logits(logits)) == pytest.approx(math.log(4))
    assert float(ppo.logprobs_of(logits, T([[2]]))) == pytest.approx(math.log(0.25))
    skewed = T([[[2.0, 0.0]]])
    assert float(ppo.logprobs_of(skewed, T([[0]]), temperature=2.0)) == pytest.approx(-math.log(1 + math.exp(-1)))


def test_restricted_logprobs_are_those_of_the_allowed_tokens_only():
    from secondthought.rl.experience import Sample, allowed_batch

    logits = torch.randn(1, 2, 6)
    allowed = torch.tensor([[[True, False, True, False, False, False], [True] * 6]])
    restricted = ppo.restrict(logits, allowed)
    subset = torch.log_softmax(logits[0, 0, [0, 2]], dim=-1)
    assert float(ppo.logprobs_of(restricted, T([[2, 3]]))[0, 0]) == pytest.approx(float(subset[1]), abs=1e-6)
    assert float(ppo.logprobs_of(restricted, T([[2, 3]]))[0, 1]) == pytest.approx(
        float(torch.log_softmax(logits[0, 1], -1)[3]), abs=1e-6)  # a step that allowed everything: as free
    entropy = ppo.entropy_from_logits(restricted)
    assert float(entropy[0, 0]) == pytest.approx(float(-(subset.exp() * subset).sum()), abs=1e-6)
    assert ppo.restrict(logits, None) is logits
    packed = np.packbits(allowed[0, :1].numpy(), axis=-1)
    batch = allowed_batch([Sample([1], [5], allowed=packed), Sample([1], [5, 6], allowed=packed)], 3, 6)
    assert batch.shape == (2, 3, 6) and batch[0, 0].tolist() == allowed[0, 0].tolist() and batch[0, 1:].all()
    assert allowed_batch([Sample([1], [5])], 1, 6) is None


def test_adaptive_kl_controller():
    ctl = ppo.AdaptiveKLController(0.1, target=6.0, horizon=10000)
    assert ctl.update(12.0, 1000) == pytest.approx(0.1 * 1.02)  # error clipped at +0.2
    assert ctl.update(3.0, 1000) == pytest.approx(0.1 * 1.02 * 0.98)  # -0.5 clipped at -0.2
    assert ctl.update(6.6, 1000) == pytest.approx(0.1 * 1.02 * 0.98 * 1.01)
    fixed = ppo.AdaptiveKLController(0.1, target=None)
    assert fixed.update(100.0, 1000) == 0.1


def test_collate_lays_prompts_left_and_completions_right():
    samples = [Sample([5, 6], [7, 8, 9]), Sample([4], [3])]
    tb = collate(samples, pad_id=0)
    assert tb.prompt_width == 2
    assert tb.input_ids.tolist() == [[5, 6, 7, 8, 9], [0, 4, 3, 0, 0]]
    assert tb.attention_mask.tolist() == [[1, 1, 1, 1, 1], [0, 1, 1, 0, 0]]
    assert tb.position_ids.tolist() == [[0, 1, 2, 3, 4], [0, 0, 1, 1, 1]]
    assert tb.completion_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    matrix = padded([np.array([1.0, 2.0, 3.0]), np.array([4.0])], 3)
    assert matrix.tolist() == [[1, 2, 3], [4, 0, 0]]
    assert [a.tolist() for a in unpadded(matrix, samples)] == [[1, 2, 3], [4]]
    assert [len(s) for s in shards(list(range(10)), 3)] == [3, 4, 3]


@pytest.fixture(scope="module")
def tiny(tokenizer, tmp_path_factory):
    from secondthought.models.lm import build_base_model, load_model

    return load_model(build_base_model("tiny-llama", tokenizer, tmp_path_factory.mktemp("tiny") / "m")).eval()


def test_sampling_matches_hf_generate_greedy_and_is_reproducible(tiny, tokenizer):
    prompts = [tokenizer("be kind " * k).input_ids for k in range(1, 6)]
    params = SamplingParams(max_new_tokens=10, temperature=0, batch_size=2)
    ours = sample(tiny, prompts, tokenizer.eos_token_id, tokenizer.pad_token_id, params, seed=0)
    for p, o in zip(prompts, ours):
        reference = tiny.generate(torch.tensor([p]), max_new_tokens=10, do_sample=False)[0, len(p):].tolist()
        assert o == reference
    warm = SamplingParams(max_new_tokens=10, batch_size=2, top_k=50, top_p=0.9)
    first = sample(tiny, prompts, tokenizer.eos_token_id, tokenizer.pad_token_id, warm, seed=3)
    assert first == sample(tiny, prompts, tokenizer.eos_token_id, tokenizer.pad_token_id, warm, seed=3)
    assert first != sample(tiny, prompts, tokenizer.eos_token_id, tokenizer.pad_token_id, warm, seed=4)


def test_rows_that_end_leave_the_batch(tiny, tokenizer):
    texts = ["be kind", "The dog sleeps on the warm mat today", "Numbers: 1 2 3", "Why?"]
    prompts = [tokenizer(t).input_ids for t in texts]
    params = SamplingParams(max_new_tokens=8, temperature=0)
    greedy = sample(tiny, prompts, tokenizer.eos_token_id, tokenizer.pad_token_id, params, seed=0)
    # pretend a token some rows write is EOS: those rows stop there while the others go on
    eos = next(t for row in greedy for t in row if sum(t in r for r in greedy) < len(greedy))
    ended = sample(tiny, prompts, eos, tokenizer.pad_token_id, params, seed=0)
    for k in range(len(prompts)):
        cut = greedy[k].index(eos) + 1 if eos in greedy[k] else 8
        assert ended[k] == greedy[k][:cut]
    assert min(map(len, ended)) < 8 == max(map(len, ended))


def test_top_k_and_top_p_filter():
    logits = T([[3.0, 2.0, 1.0, 0.0]])
    gen = torch.Generator().manual_seed(0)
    picks = {int(next_tokens(logits, SamplingParams(top_k=2), gen)) for _ in range(200)}
    assert picks == {0, 1}
    probs = torch.softmax(logits, -1)[0]  # 0.64, 0.24, 0.09, 0.03: top_p 0.7 keeps the first two
    assert float(probs[0]) < 0.7 < float(probs[:2].sum())
    picks = {int(next_tokens(logits, SamplingParams(top_p=0.7), gen)) for _ in range(200)}
    assert picks == {0, 1}


def test_validity_reward_and_discriminator_text():
    source, target = "I shove him away.", "I ask him to leave."
    chain = serialize(compute_edits(source, target))
    good = completion(chain, target)
    items = [Scored("", source, target, good, (), TOKENS), Scored("", source, target, completion(chain, "I ask."), (), TOKENS),
             Scored("", "We walk.", target, good, (), TOKENS), Scored("", source, target, "no edits", (), TOKENS)]
    assert validity(items).tolist() == [1.0, 0.0, -1.0, -1.0]
    assert check_completion("We walk.", good, TOKENS).reason.startswith("chain does not apply")
    # copying the source, with an empty chain or one that replaces a word by itself, is no correction
    same = completion("<|rep|> 1 shove <|with|> shove", source)
    copies = [Scored("", source, target, completion("", source), (), TOKENS), Scored("", source, target, same, (), TOKENS)]
    assert validity(copies).tolist() == [-1.0, -1.0]
    assert check_completion(source, same, TOKENS).reason == "the chain changes nothing"
    assert check_completion(source, completion("", source), TOKENS).no_op and not check_completion(source, good, TOKENS).no_op
    first, second = discriminator_pair("Be kind.", source, chain, target, TOKENS)
    assert first == "Be kind. I shove him away." and second.endswith("=> I ask him to leave.")
    # a reversed chain's negative starts like the positive of the same triple: only the edits differ
    back = serialize(compute_edits(target, source))
    negative = reverse_negative("Be kind.", target, back, source, TOKENS)
    assert negative[0] == first and negative[1].endswith("=> I shove him away.") and negative[1] != second
    assert "shove" in second and "<|" not in second  # the chain in plain words for the encoder


def test_placement_colocated_and_spread():
    bundles, where = placement(RLConfig(rollout_workers=2, learner_workers=1), cpus=2)
    assert bundles == [{"CPU": 1.0}, {"CPU": 1.0}]
    assert where["rollout"] == [(0, 0.25), (1, 1.0)] and where["learner"] == [(0, 0.25)]
    assert where["reference"] == where["discriminator"] == [(0, 0.25)]
    bundles, where = placement(RLConfig(rollout_workers=2, learner_workers=2, minibatch_size=8, micro_batch_size=4, colocate=False,
                                        use_gpu=True), cpus=16)
    assert bundles == [{"CPU": 1.0, "GPU": 1.0}] * 6
    assert sorted(i for role in where.values() for i, _ in role) == list(range(6))


def test_prompt_batches_cover_each_epoch_once():
    prompts = Prompts([str(i) for i in range(10)], *[[""] * 10] * 4, [[1]] * 10, {})
    first_epoch = prompts.batch(1, 5, seed=0) + prompts.batch(2, 5, seed=0)
    assert sorted(first_epoch) == list(range(10))
    assert prompts.batch(3, 5, seed=0) + prompts.batch(4, 5, seed=0) != first_epoch
    assert prompts.batch(2, 5, seed=0) == prompts.batch(2, 5, seed=0)


def test_rl_config_errors_name_the_flag():
    with pytest.raises(ConfigError, match="--rl.minibatch_size 6"):
        RLConfig(minibatch_size=6, micro_batch_size=4)
    with pytest.raises(ConfigError, match="--rl.reward"):
        RLConfig(reward="bleu")
    with pytest.raises(ConfigError, match="--rl.prompts_per_iteration"):
        RLConfig(prompts_per_iteration=12, minibatch_size=8)
    with pytest.raises(ConfigError, match="--rl.temperature must be positive, got 0"):
        RLConfig(temperature=0)
