"""The serving side's model: a trained model folder loaded once, decoding checked requests in batches.

A Serve model replica (serve/app.py) holds one Replica and hands it each batch that @serve.batch gathers.
Requests with the same sampling settings are decoded together (greedy by default, so a request's answer does
not depend on what else is in its batch). No Ray here.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

import torch

from secondthought.chains.text import TGT
from secondthought.config import ServeConfig
from secondthought.decoding.constraints import Constrain
from secondthought.decoding.machine import ChainMachine
from secondthought.decoding.policy import Policy, SamplingParams, completion_text
from secondthought.decoding.vocabulary import UnsupportedTokenizer
from secondthought.runs import model_folder
from secondthought.serving.handlers import (
    ApiError,
    CompletionJob,
    RealignJob,
    Sampling,
    cut_at_stop,
    decoding_of,
    realign_answer,
)

Job = Union[RealignJob, CompletionJob]


def _device(cfg: ServeConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ApiError("device", "serve.device is cuda but this replica sees no GPU", status=500)
    return torch.device(cfg.device)


def _params(s: Sampling, batch_size: int = 1) -> SamplingParams:
    return SamplingParams(max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                          batch_size=batch_size)


def _ours(e: Exception) -> ApiError:
    """An error of the server's own while answering one request: a 500 for that request alone."""
    return ApiError("request", f"the server failed on this request ({type(e).__name__}: {e})", status=500)


def _failed(work: Callable, *args) -> object:
    """``work(*args)``, or the ApiError it raised (any other error as the server's own)."""
    try:
        return work(*args)
    except ApiError as e:
        return e
    except Exception as e:
        return _ours(e)


class Replica:
    def __init__(self, cfg: ServeConfig, name: str = "secondthought", cpus: float = 1):
        folder = model_folder(cfg.model, "serve.model")
        device = _device(cfg)
        bf16 = cfg.dtype == "bf16" or (cfg.dtype == "auto" and device.type == "cuda")
        self.cfg, self.name = cfg, name
        self.policy = Policy.load(folder, device=device, dtype=torch.bfloat16 if bf16 else torch.float32,
                                  threads=cfg.threads or max(1, int(cpus)))
        self.tokenizer = self.policy.tokenizer
        self.writes_chains = self.policy.info.writes_chains
        self.decoding = decoding_of(cfg, self.policy.info)
        self.context_limit = getattr(self.policy.model.config, "max_position_embeddings", None) or 2048
        self.folder = Path(folder)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    @cached_property
    def _unwritable(self) -> frozenset[int]:
        """Bytes no token of this model's vocabulary writes (SmolLM2's lacks 0xF1, for one: the tokenizer drops
        them, and a chain could never remove text that holds them)."""
        try:
            table = self.policy.grammar.table
        except UnsupportedTokenizer:
            return frozenset()
        return frozenset(b for b in range(256) if bytes([b]) not in table.by_bytes)

    def _check_writable(self, job: Job) -> None:
        fields = ([("text", job.source), ("context", job.prompt)] if isinstance(job, RealignJob)
                  else [("prompt", job.prompt)])
        for param, text in fields:
            if self._unwritable and not self._unwritable.isdisjoint(text.encode()):
                char = next(c for c in text if not self._unwritable.isdisjoint(c.encode()))
                raise ApiError(param, f"holds {char!r} (U+{ord(char):04X}), a character this model's tokenizer "
                                      "cannot write")

    def _ids(self, job: Job) -> list[int]:
        self._check_writable(job)
        ids = self.encode(job.prompt)
        if not ids:
            raise ApiError("prompt", "no text: a prompt needs at least one token")
        if len(ids) + job.sampling.max_new_tokens > self.context_limit:
            raise ApiError("prompt" if isinstance(job, CompletionJob) else "text",
                           f"{len(ids)} prompt tokens + {job.sampling.max_new_tokens} new ones exceed the model's "
                           f"context of {self.context_limit} tokens")
        return ids

    def _constraint(self, job: Job) -> Optional[ChainMachine]:
        """A realign job's constraint to its text (after its corrected prefix), when this server constrains."""
        if not isinstance(job, RealignJob) or job.derived or not self.writes_chains:
            return None
        if self.decoding == "free":
            first = self.policy.chain_first(1)
            return first[0] if first else None
        # derived decoding continues a request's corrected edits constrained: they are a chain to go on with
        try:
            return self.policy.constraints([job.source], Constrain(self.cfg.force_target), [job.prefix])[0]
        except ValueError as e:
            raise ApiError("edits", f"constrained decoding cannot continue these edits: {e}") from None

    def _decode(self, prompts: Sequence[list[int]], jobs: Sequence[Job],
                constraints: Sequence[Optional[ChainMachine]]) -> list[Union[list[int], ApiError]]:
        """Each job's completion token ids, or the error it alone met. Greedy jobs with equal settings (and all
        constrained or all free) are decoded together; a sampled job alone, so that its seed gives the same answer
        whatever else came in its batch. A group that fails is decoded again job by job: one bad job fails alone."""
        groups: dict[tuple, list[int]] = defaultdict(list)
        for k, job in enumerate(jobs):
            groups[job.sampling, constraints[k] is not None, k if job.sampling.temperature > 0 else -1].append(k)
        out: list = [None] * len(jobs)
        for (s, constrained, _), members in groups.items():
            batch = ([prompts[k] for k in members], s, [constraints[k] for k in members] if constrained else None)
            try:
                for k, ids in zip(members, self._sample(*batch)):
                    out[k] = ids
            except Exception as e:
                if len(members) == 1:
                    out[members[0]] = _ours(e)
                    continue
                for k in members:
                    alone = ([prompts[k]], s, [constraints[k]] if constrained else None)
                    out[k] = _failed(lambda *a: self._sample(*a)[0], *alone)
        return out

    def _sample(self, prompts: list[list[int]], s: Sampling, constraints: Optional[list[ChainMachine]]
                ) -> list[list[int]]:
        return self.policy.sample(prompts, _params(s, len(prompts)), seed=s.seed, constraints=constraints)

    def _run(self, jobs: Sequence[Job], answer: Callable[[Job, list[int], list[int]], object]) -> list:
        """``answer(job, prompt ids, completion ids)`` for each job, decoded in one batch; an ApiError in place of
        each job that does not fit the model or fails on its own (no job fails another)."""
        results: list = []
        constraints: dict[int, Optional[ChainMachine]] = {}
        for k, job in enumerate(jobs):
            results.append(_failed(self._ids, job))
            constraints[k] = None if isinstance(results[k], ApiError) else _failed(self._constraint, job)
            if isinstance(constraints[k], ApiError):
                results[k], constraints[k] = constraints[k], None
        ok = [k for k, r in enumerate(results) if not isinstance(r, ApiError)]
        decoded = self._decode([results[k] for k in ok], [jobs[k] for k in ok], [constraints[k] for k in ok])
        for k, ids in zip(ok, decoded):
            results[k] = ids if isinstance(ids, ApiError) else _failed(answer, jobs[k], results[k], ids)
        return results

    def realign(self, jobs: Sequence[RealignJob]) -> list[Union[dict, ApiError]]:
        """The answers; a derived answer that changes nothing (the model wrote the text back) is replaced by the
        model's chain decoded constrained to change the text, its target forced."""
        def answer(job: RealignJob, prompt: list[int], ids: list[int]) -> dict:
            return realign_answer(job, completion_text(self.tokenizer, ids), self.writes_chains, self.name,
                                  len(prompt), len(ids))

        answers = self._run(jobs, answer)
        redo = [k for k, a in enumerate(answers) if jobs[k].derived and isinstance(a, dict) and not a["valid"]]
        again = self._run([replace(jobs[k], derived=False, prompt=jobs[k].prompt.removesuffix(TGT)) for k in redo],
                          answer)
        for k, a in zip(redo, again):
            answers[k] = a
        return answers

    def _finish(self, ids: Sequence[int], job: CompletionJob) -> tuple[str, str]:
        text, stopped = cut_at_stop(completion_text(self.tokenizer, ids), job.stops)
        ended = stopped or (bool(ids) and ids[-1] == self.policy.eos_id)
        return text, "stop" if ended else "length"

    def complete(self, jobs: Sequence[CompletionJob]) -> list[Union[tuple[str, str, int, int], ApiError]]:
        """(text, finish_reason, prompt tokens, completion tokens) per job."""
        return self._run(jobs, lambda job, prompt, ids: (*self._finish(ids, job), len(prompt), len(ids)))

    def stream(self, job: CompletionJob) -> Iterator[tuple[str, str | None]]:
        """(new text, None) as tokens are decoded, then ("", finish_reason). Text that could be the start of a stop
        sequence is held back until it is known not to be one."""
        prompt_ids = self._ids(job)
        hold = max((len(stop) for stop in job.stops), default=1) - 1
        ids: list[int] = []
        sent = 0
        for token in self.policy.stream(prompt_ids, _params(job.sampling), seed=job.sampling.seed):
            ids.append(token)
            text, stopped = cut_at_stop(completion_text(self.tokenizer, ids), job.stops)
            if stopped:
                break
            if len(text) - hold > sent and not text.endswith("\ufffd"):  # not mid-way through a character
                yield text[sent: len(text) - hold], None
                sent = len(text) - hold
        text, reason = self._finish(ids, job)
        if len(text) > sent:
            yield text[sent:], None
        yield "", reason

    def healthy(self) -> None:
        """One forward pass on one token; raises if the model no longer computes finite numbers."""
        with torch.no_grad():
            device = next(self.policy.model.parameters()).device
            logits = self.policy.model(input_ids=torch.tensor([[self.policy.eos_id]], device=device)).logits
        if not math.isfinite(float(logits.float().abs().max())):
            raise RuntimeError("the model's output is not finite")
