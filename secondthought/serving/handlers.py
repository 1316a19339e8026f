"""What the serving routes do, as plain functions: check a request against the server's bounds, apply edits,
turn a model's completion into the realign answer, shape OpenAI completions. No Ray, no torch: the Serve
deployments (serve/app.py) call these, and tests call them directly.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Optional, Sequence

from secondthought.chains.edits import (
    Edit,
    EditApplyError,
    EditChain,
    EditError,
    decipher,
    derived_chain,
    describe,
    parse,
    serialize,
    split_units,
)
from secondthought.chains.formats import EditFormat
from secondthought.chains.text import TGT, check_completion, derived_completion, prompt, split_completion
from secondthought.config import ServeConfig
from secondthought.runs import ModelInfo
from secondthought.serving.requests import ApplyRequest, CompletionRequest, EditIn, RealignRequest


class ApiError(Exception):
    """A request the server refuses: ``status`` (422 unless said), the field (``param``) and what is wrong."""

    def __init__(self, param: str, message: str, status: int = 422):
        super().__init__(f"{param}: {message}")
        self.param, self.message, self.status = param, message, status

    def body(self) -> dict:
        """OpenAI's error shape (its client raises it as the matching error class)."""
        return {"error": {"message": f"{self.param}: {self.message}", "type": "invalid_request_error", "param": self.param, "code": None}}

    def __reduce__(self):  # raised in a replica and re-raised in the ingress: keep the fields through pickling
        return ApiError, (self.param, self.message, self.status)


@dataclass(frozen=True)
class Sampling:
    """How one request is decoded: requests with equal Sampling are decoded in one batch."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0


@dataclass(frozen=True)
class RealignJob:
    """A checked realign request, ready for the model."""

    prompt: str
    """The model's prompt: context and text in the training format, then the corrected prefix if any."""
    source: str
    prefix: str
    """The corrected first edits, written as the model writes chains: its completion continues them."""
    sampling: Sampling
    format: EditFormat
    """How the model writes chains."""
    given: tuple[Edit, ...] = ()
    """The corrected first edits themselves."""
    derived: bool = False
    """The prompt ends in <|tgt|>: the model writes its target, the answer's chain is the exact one to it."""


@dataclass(frozen=True)
class CompletionJob:
    prompt: str
    sampling: Sampling
    stops: tuple[str, ...] = ()


def check_length(value: str, limit: int, param: str) -> None:
    if len(value) > limit:
        raise ApiError(param, f"{len(value)} characters, more than the {limit} this server accepts")


def _unit(content: str, lead: str = " ") -> str:
    """A word or words as edit content, with the whitespace before the first word: as given, else ``lead`` (a
    client may leave it out)."""
    return content if not content or content[:1].isspace() else lead + content


def _lead(units: list[str], position: int) -> str:
    """The whitespace before the text's word at ``position`` (one space past its end)."""
    unit = units[position] if 0 <= position < len(units) else " "
    return unit[: len(unit) - len(unit.lstrip())] or " "


def to_chain(edits: Sequence[EditIn], text: str, param: str = "edits") -> EditChain:
    """The chain the edits make; an old or new text given without the whitespace before it gets the text's own
    there (a newline, two spaces), so that an edit shown without it applies as it was."""
    units = split_units(text)
    out = []
    for k, e in enumerate(edits):
        where = f"{param}[{k}]"
        if e.op != "ins" and not e.old.strip():
            raise ApiError(f"{where}.old", f"a {'delete' if e.op == 'del' else 'replace'} needs the text it removes")
        if e.op != "del" and not e.new.strip():
            raise ApiError(f"{where}.new", f"an {'insert' if e.op == 'ins' else 'replace'} needs the text it writes")
        if e.op == "ins" and e.old:
            raise ApiError(f"{where}.old", "an insert removes nothing: leave old empty")
        if e.op == "del" and e.new:
            raise ApiError(f"{where}.new", "a delete writes nothing: leave new empty")
        lead = _lead(units, e.position) if e.op != "ins" else " "
        out.append(Edit(e.op, e.position, _unit(e.old, lead), _unit(e.new, lead)))
    chain = EditChain(tuple(out))
    try:
        serialize(chain)  # refuses content holding a reserved edit marker
    except EditError as e:
        raise ApiError(param, str(e)) from None
    return chain


def chain_of(edits: Optional[Sequence[EditIn]], chain: Optional[str], text: str, cfg: ServeConfig) -> EditChain:
    """The chain a request gives for ``text``, as structured edits or serialized; empty when it gives neither."""
    if chain is not None:
        check_length(chain, cfg.max_prompt_chars, "chain")
        try:
            parsed = parse(chain)
        except EditError as e:
            raise ApiError("chain", str(e)) from None
    else:
        if edits and len(edits) > cfg.max_edits:  # counted before anything is built
            raise ApiError("edits", f"{len(edits)} edits, more than the {cfg.max_edits} this server accepts")
        parsed = to_chain(edits or [], text)
    if len(parsed) > cfg.max_edits:
        raise ApiError("edits" if chain is None else "chain",
                       f"{len(parsed)} edits, more than the {cfg.max_edits} this server accepts")
    return parsed


def applied(chain: EditChain, text: str, param: str) -> str:
    try:
        return chain.apply(text)
    except EditApplyError as e:
        raise ApiError(param, str(e)) from None


def views(chain: EditChain) -> list[dict]:
    return [dict(op=e.op, position=e.pos, old=e.old, new=e.new, line=describe(e)) for e in chain.edits]


def apply_edits(req: ApplyRequest, cfg: ServeConfig) -> dict:
    """``POST /v1/edits/apply``: the text with the edits applied; an edit that does not fit names what is there."""
    check_length(req.text, cfg.max_text_chars, "text")
    chain = chain_of(req.edits, req.chain, req.text, cfg)
    result = applied(chain, req.text, "edits" if req.chain is None else "chain")
    return dict(result=result, edits=views(chain), chain=serialize(chain), explanation=decipher(chain))


def _sampling(max_tokens: Optional[int], temperature: float, top_p: float, top_k: int, seed: int,
              cfg: ServeConfig, default: Optional[int] = None) -> Sampling:
    if max_tokens is not None and max_tokens > cfg.max_new_tokens:
        raise ApiError("max_tokens", f"{max_tokens} is more than the {cfg.max_new_tokens} this server writes")
    return Sampling(max_tokens or default or cfg.default_new_tokens, temperature, top_p, top_k, seed)


def realign_budget(text: str, cfg: ServeConfig) -> int:
    """New tokens a realign answer gets when the request does not say: enough for a chain that rewrites the whole
    text and then its result (the text written about three times, at 3-4 characters a token: about a token a
    character), so that a constrained chain on a long text is not closed early for want of tokens; within the
    server's bounds. Decoding ends at the model's end of text, so a shorter answer costs no more."""
    return min(cfg.max_new_tokens, max(cfg.default_new_tokens, len(text) + 32))


def decoding_of(cfg: ServeConfig, info: ModelInfo) -> str:
    """How /v1/realign decodes: the config's choice, or (auto) the model's default (``ModelInfo.served_decoding``)."""
    if not info.writes_chains:
        return "free"
    return info.served_decoding if cfg.decoding == "auto" else cfg.decoding


def realign_job(req: RealignRequest, cfg: ServeConfig, writes_chains: bool, fmt: EditFormat,
                derive: bool = False) -> RealignJob:
    """Check a realign request; a corrected prefix must fit the text (else a 422 naming the edit). The request's
    edits are structured or serialized (edit tokens) whatever the model's format; the prompt gets them in it.
    ``derive``: the model writes its target straight away and the answer's chain is derived from it, unless the
    request gives corrected edits (the model then continues them, as constrained decoding does)."""
    check_length(req.text, cfg.max_text_chars, "text")
    check_length(req.context, cfg.max_text_chars, "context")
    prefix = chain_of(req.edits, req.chain, req.text, cfg)
    if prefix.edits and not writes_chains:
        raise ApiError("edits" if req.chain is None else "chain",
                       "this model writes targets only (no chains of edits): it cannot continue a chain")
    applied(prefix, req.text, "edits" if req.chain is None else "chain")
    g = req.generation
    prefix_text = fmt.continued(fmt.write(prefix, req.text)) if prefix.edits else ""
    derived = derive and writes_chains and not prefix.edits
    return RealignJob(prompt(req.context, req.text) + (TGT if derived else prefix_text), req.text, prefix_text,
                      _sampling(g.max_tokens, g.temperature, g.top_p, g.top_k, g.seed, cfg,
                                realign_budget(req.text, cfg)), fmt, prefix.edits,
                      derived)


def realign_answer(job: RealignJob, completion: str, writes_chains: bool, model: str, prompt_tokens: int,
                   completion_tokens: int) -> dict:
    """The realign response for the model's ``completion`` (special tokens kept, EOS removed)."""
    usage = dict(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                 total_tokens=prompt_tokens + completion_tokens)
    if not writes_chains:  # the targets-only baseline: show its change as edits computed from the diff
        target = split_completion(completion).target
        chain = derived_chain(job.source, target)
        changed = target.strip() != job.source.strip()
        return dict(edits=views(chain), chain=serialize(chain), explanation=decipher(chain), result=target,
                    target=target, applies=True, consistent=True, valid=changed,
                    problem="" if changed else "the target changes nothing", edits_from="diff", model=model,
                    usage=usage)
    if job.derived:  # the completion is the target alone
        completion = derived_completion(job.source, completion, job.format)
    text = job.prefix + completion
    verdict = check_completion(job.source, text, job.format)
    part = split_completion(text)
    try:
        chain = job.format.read(part.chain_text, job.source)
        written = serialize(chain)
    except EditError:  # what the model wrote after the user's edits does not parse (or place): keep theirs
        chain, written = EditChain(job.given), part.chain_text
    result = chain.apply(job.source) if verdict.applies else None
    return dict(edits=views(chain), chain=written, explanation=decipher(chain), result=result,
                target=part.target, applies=verdict.applies, consistent=verdict.consistent, valid=verdict.valid,
                problem=verdict.reason, edits_from="derived" if job.derived else "model", model=model, usage=usage)


def completion_jobs(req: CompletionRequest, cfg: ServeConfig) -> list[CompletionJob]:
    for k, text in enumerate(req.prompts):
        check_length(text, cfg.max_prompt_chars, "prompt" if isinstance(req.prompt, str) else f"prompt[{k}]")
    sampling = _sampling(req.max_tokens, req.temperature, req.top_p, 0, req.seed or 0, cfg)
    return [CompletionJob(text, sampling, tuple(req.stops)) for text in req.prompts]


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the first stop sequence in it, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def completion_id() -> str:
    return f"cmpl-{uuid.uuid4().hex}"


def completion_body(model: str, choices: list[tuple[str, str]], prompt_tokens: int, completion_tokens: int) -> dict:
    """OpenAI's completion object; ``choices``: (text, finish_reason) per prompt."""
    return {"id": completion_id(), "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"text": text, "index": k, "logprobs": None, "finish_reason": reason}
                        for k, (text, reason) in enumerate(choices)],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


def stream_chunk(cid: str, created: int, model: str, text: str, finish_reason: Optional[str]) -> dict:
    return {"id": cid, "object": "text_completion", "created": created, "model": model,
            "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}]}


def models_body(model: str, created: int) -> dict:
    return {"object": "list", "data": [{"id": model, "object": "model", "created": created, "owned_by": "secondthought"}]}
