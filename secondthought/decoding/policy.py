"""Load a trained model folder and decode: one way to write completions, used by RL rollouts, evaluation
and serving alike (torch + a Hugging Face causal LM; no Ray).

Prompts are sorted by length and cut into micro-batches (little left padding); each micro-batch is
prefilled once, then decoded one token a step from the cache. A row that has written EOS leaves the
batch at once (its cache rows are dropped), so the long tail of a few long completions does not keep
paying for the finished ones: the main saving over ``model.generate``, which decodes every row until
the longest is done.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import torch

from secondthought.chains.text import TGT, Verdict, check_completion, derived_completion, split_completion
from secondthought.decoding.constraints import ChainGrammar, Constrain
from secondthought.decoding.machine import ChainMachine
from secondthought.runs import ModelInfo, read_model_info


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 96
    temperature: float = 1.0
    top_k: int = 0
    """Keep the k most likely tokens (0: all)."""
    top_p: float = 1.0
    """Keep the smallest set of tokens whose probability reaches p (1: all)."""
    batch_size: int = 16
    """Prompts decoded together."""


MIN_TEMPERATURE = 1e-4
"""Sampling divides the logits by at least this: below it the scaled logits overflow float32."""


def _filter(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    if params.top_k and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        drop = cumulative - torch.softmax(sorted_logits, dim=-1) >= params.top_p
        drop[:, 0] = False  # the most likely token always stays (a top_p that rounds to 0 in float32 dropped it too)
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return logits


def next_tokens(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> torch.Tensor:
    """Sample one token a row from softmax(filtered logits / temperature); temperature 0 is greedy."""
    if params.temperature == 0:
        return logits.argmax(dim=-1)
    # a temperature near 0 is greedy in all but name, and dividing by it overflows to inf (softmax then gives NaN)
    probs = torch.softmax(_filter(logits.float() / max(params.temperature, MIN_TEMPERATURE), params), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _left_padded(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows left-padded to one width: (input_ids, attention_mask, position_ids); every row ends in the last column."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for k, r in enumerate(rows):
        input_ids[k, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        attention_mask[k, width - len(r) :] = 1
    return input_ids, attention_mask, (attention_mask.cumsum(dim=1) - 1).clamp(min=0)


@torch.no_grad()
def _decode(model, prompts: Sequence[Sequence[int]], eos_id: int, pad_id: int, params: SamplingParams,
            generator: torch.Generator, constraints: Optional[Sequence[ChainMachine]] = None
            ) -> Iterator[tuple[list[int], list[int]]]:
    """Decode a batch one step at a time: yields (rows still decoding, the token each wrote) per step. With
    ``constraints`` (one per prompt) a row only writes tokens its constraint allows."""
    device = next(model.parameters()).device
    input_ids, attention_mask, position_ids = (t.to(device) for t in _left_padded(prompts, pad_id))
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True,
                logits_to_keep=1)
    cache, logits = out.cache, out.logits[:, -1]
    positions = position_ids[:, -1]
    active = torch.arange(len(prompts), device=device)  # original row of each row still decoding
    for step in range(params.max_new_tokens):
        rows = active.tolist()
        if constraints is not None:
            left = params.max_new_tokens - step
            allowed = torch.stack([constraints[row].mask(logits.shape[-1], left) for row in rows]).to(logits.device)
            logits = logits.masked_fill(~allowed, float("-inf"))
        tokens = next_tokens(logits, params, generator)
        written = tokens.tolist()
        if constraints is not None:
            for row, token in zip(rows, written):
                constraints[row].advance(token)
        yield rows, written
        going = tokens != eos_id
        if step == params.max_new_tokens - 1 or not bool(going.any()):
            return
        if not bool(going.all()):
            keep = going.nonzero().squeeze(-1)
            cache.batch_select_indices(keep)
            active, tokens, attention_mask, positions = active[keep], tokens[keep], attention_mask[keep], positions[keep]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(active), 1))], dim=1)
        positions = positions + 1
        out = model(input_ids=tokens.unsqueeze(-1), attention_mask=attention_mask, position_ids=positions.unsqueeze(-1),
                    cache=cache, use_cache=True)
        cache, logits = out.cache, out.logits[:, -1]


def _sample_batch(model, prompts: Sequence[Sequence[int]], eos_id: int, pad_id: int, params: SamplingParams,
                  generator: torch.Generator, constraints: Optional[Sequence[ChainMachine]]) -> list[list[int]]:
    completions: list[list[int]] = [[] for _ in prompts]
    for rows, tokens in _decode(model, prompts, eos_id, pad_id, params, generator, constraints):
        for row, token in zip(rows, tokens):
            completions[row].append(token)
    return completions


def _generator(model, seed: int) -> torch.Generator:
    return torch.Generator(device=next(model.parameters()).device).manual_seed(seed)


def sample(model, prompts: Sequence[Sequence[int]], eos_id: int, pad_id: int, params: SamplingParams,
           seed: int, done: Optional[Callable[[int], None]] = None,
           constraints: Optional[Sequence[ChainMachine]] = None) -> list[list[int]]:
    """One completion per prompt (token ids; ends with ``eos_id`` unless cut at max_new_tokens); with
    ``constraints`` (one per prompt, ``secondthought.decoding.constraints``) each row writes only what its constraint allows.

    The same model, prompts, parameters and seed give the same completions, so work lost with a
    dead actor can be redone exactly.
    """
    generator = _generator(model, seed)
    completions: list[list[int]] = [[] for _ in prompts]
    for chunk in _by_length([len(p) for p in prompts], params.batch_size, done):
        rows = [constraints[i] for i in chunk] if constraints is not None else None
        for i, completion in zip(chunk, _sample_batch(model, [prompts[i] for i in chunk], eos_id, pad_id, params,
                                                     generator, rows)):
            completions[i] = completion
    return completions


def _by_length(lengths: Sequence[int], batch_size: int, done: Optional[Callable[[int], None]]) -> Iterator[list[int]]:
    """Row indices sorted by length, a batch at a time (little padding); ``done(rows)`` after each batch."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]
        if done is not None:
            done(min(start + batch_size, len(order)))


@torch.no_grad()
def mean_nll(model, contexts: Sequence[Sequence[int]], texts: Sequence[Sequence[int]], pad_id: int,
             batch_size: int = 16, done: Optional[Callable[[int], None]] = None) -> list[float]:
    """Mean negative log-likelihood of each text's tokens after its context (both token ids; a text needs at
    least one token, a context may be empty: the text's first token is then not scored).

    Rows are sorted by length and left-padded, so every text is the suffix of its row and only the last
    columns' logits are computed (not the vocabulary-wide logits of the contexts)."""
    device = next(model.parameters()).device
    nll = [0.0] * len(texts)
    for chunk in _by_length([len(c) + len(t) for c, t in zip(contexts, texts)], batch_size, done):
        input_ids, attention_mask, position_ids = _left_padded([list(contexts[i]) + list(texts[i]) for i in chunk],
                                                               pad_id)
        keep = max(len(texts[i]) for i in chunk) + 1
        logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                       position_ids=position_ids.to(device), logits_to_keep=keep).logits.float()
        # logits[:, j] predicts the token at column (width - keep + j + 1)
        losses = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), input_ids[:, -keep + 1 :].to(device),
                                                   reduction="none")
        for row, i in enumerate(chunk):
            scored = len(texts[i]) if contexts[i] else len(texts[i]) - 1
            nll[i] = float(losses[row, losses.shape[1] - scored :].mean()) if scored else float("nan")
    return nll


def completion_text(tokenizer, ids: Sequence[int]) -> str:
    """A completion's token ids as text: special tokens kept (the chain's edit tokens), EOS removed."""
    eos = tokenizer.eos_token_id
    return tokenizer.decode([t for t in ids if t != eos], skip_special_tokens=False)


class ChainFirst:
    """Free decoding of a model that also learned direct targets (``--sft.direct_targets``): its completion starts
    with a chain, not with ``<|tgt|>`` or EOS, which greedy decoding would otherwise often pick (the direct form);
    after the first token the model writes whatever it likes. A constraint in the machine's protocol."""

    def __init__(self, banned: Sequence[int]):
        self.banned, self.started = list(banned), False

    def mask(self, width: int, left: Optional[int] = None) -> torch.Tensor:
        allowed = torch.ones(width, dtype=torch.bool)
        if not self.started:
            allowed[self.banned] = False
        return allowed

    def advance(self, token: int) -> None:
        self.started = True


@dataclass(frozen=True)
class Output:
    """One completion: its text split into the chain of edits and the target, and what the chain is worth."""

    text: str
    """The whole completion (chain, <|tgt|>, target), special tokens included, EOS removed."""
    chain_text: str
    target: str
    verdict: Optional[Verdict]
    """Does the chain parse, apply to the source and give the written target (None: the model writes no
    chains, or no source was given)."""
    tokens: int = 0
    """Tokens the model wrote (EOS included)."""


@dataclass
class Policy:
    """A trained model folder loaded for decoding: the model, its tokenizer and what it writes."""

    model: object
    tokenizer: object
    info: ModelInfo

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu", dtype: Optional[torch.dtype] = None,
             threads: Optional[int] = None) -> Policy:
        """``threads``: torch's CPU threads in this process (None: leave as it is)."""
        from transformers import AutoTokenizer

        from secondthought.models.lm import load_model

        if threads is not None:
            torch.set_num_threads(threads)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = load_model(folder, dtype=dtype).to(device).eval()
        return cls(model, tokenizer, read_model_info(folder))

    @property
    def eos_id(self) -> int:
        return self.tokenizer.eos_token_id

    @cached_property
    def grammar(self) -> ChainGrammar:
        return ChainGrammar(self.tokenizer)

    def constraints(self, sources: Sequence[str], how: Constrain, prefixes: Optional[Sequence[str]] = None
                    ) -> list[ChainMachine]:
        """One constraint per source (see ``secondthought.decoding.constraints``); ``prefixes``: chain text already in the
        prompts. Only for a model that writes chains."""
        if not self.info.writes_chains:
            raise ValueError("constrained decoding is for a model that writes chains of edits; this one writes targets "
                             "only")
        return self.grammar.constraints(sources, how, self.info.format, prefixes)

    def chain_first(self, n: int) -> Optional[list[ChainFirst]]:
        """The free-decoding constraints of ``n`` prompts: a chain first where the model also writes direct targets
        (None where it never learned to skip its chain)."""
        if not (self.info.writes_chains and self.info.direct_targets > 0):
            return None
        banned = [self.tokenizer.convert_tokens_to_ids(TGT), self.eos_id]
        return [ChainFirst(banned) for _ in range(n)]

    def sample(self, prompts: Sequence[Sequence[int]], params: SamplingParams, seed: int = 0,
               done: Optional[Callable[[int], None]] = None,
               constraints: Optional[Sequence[ChainMachine]] = None) -> list[list[int]]:
        """Completions as token ids (see :func:`sample`); ``done(rows)`` after each batch."""
        return sample(self.model, prompts, self.eos_id, self.tokenizer.pad_token_id, params, seed, done, constraints)

    def stream(self, prompt: Sequence[int], params: SamplingParams, seed: int = 0) -> Iterator[int]:
        """One prompt's completion, a token id at a time as it is decoded (the same tokens as :meth:`sample`)."""
        for _, tokens in _decode(self.model, [prompt], self.eos_id, self.tokenizer.pad_token_id, params,
                                 _generator(self.model, seed)):
            yield tokens[0]

    def output(self, ids: Sequence[int], source: Optional[str] = None) -> Output:
        return self._output(completion_text(self.tokenizer, ids), len(ids), source)

    def _output(self, text: str, tokens: int, source: Optional[str]) -> Output:
        part = split_completion(text)
        verdict = (check_completion(source, text, self.info.format) if source is not None and self.info.writes_chains
                   else None)
        return Output(text, part.chain_text, part.target, verdict, tokens)

    def complete(self, prompts: Sequence[Sequence[int]], sources: Optional[Sequence[str]], params: SamplingParams,
                 seed: int = 0, done: Optional[Callable[[int], None]] = None,
                 constrain: Optional[Constrain] = None, derive: bool = False) -> list[Output]:
        """Decode every prompt; with ``sources`` (the source text of each prompt) each chain is checked, and with
        ``constrain`` also decoded constrained to its source (else freely, a chain first: :meth:`chain_first`).
        ``derive``: the model writes its target straight after the prompt (``<|tgt|>`` forced) and the chain is the
        exact one from the source to it (:func:`~secondthought.chains.text.derived_completion`); a row whose target
        is its source is decoded again constrained, the target forced (its tokens are the two decodings')."""
        if derive:
            if sources is None or not self.info.writes_chains:
                raise ValueError("a derived chain needs a chain model and the sources")
            tgt = self.tokenizer.convert_tokens_to_ids(TGT)
            completions = self.sample([list(p) + [tgt] for p in prompts], params, seed, done)
            # every special token dropped (the tokenizer's own too): none is text a chain can write
            texts = [derived_completion(source, self.tokenizer.decode([t for t in ids if t != self.eos_id],
                                                                      skip_special_tokens=True), self.info.format)
                     for source, ids in zip(sources, completions)]
            outputs = [self._output(text, len(ids), source) for text, ids, source in zip(texts, completions, sources)]
            # a target that changes nothing is no answer: those rows write a chain constrained to change the source
            redo = [k for k, out in enumerate(outputs) if out.verdict.no_op]
            again = self.complete([prompts[k] for k in redo], [sources[k] for k in redo], params, seed,
                                  constrain=Constrain(force_target=True)) if redo else []
            for k, out in zip(redo, again):
                outputs[k] = replace(out, tokens=out.tokens + outputs[k].tokens)
            return outputs
        constraints = (self.constraints(sources, constrain) if constrain is not None
                       else self.chain_first(len(prompts)) if sources is not None else None)
        completions = self.sample(prompts, params, seed, done, constraints)
        return [self.output(ids, sources[k] if sources is not None else None) for k, ids in enumerate(completions)]
