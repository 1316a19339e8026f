"""The serving API's request and response shapes (pydantic: FastAPI validates every request body with them).

Types, required fields and fixed ranges are checked here; bounds that are configuration (text length, tokens
per request, edits per request: :class:`secondthought.config.ServeConfig`) in :mod:`secondthought.serving.handlers`.
Unknown fields are refused, so a misspelled parameter is an error rather than silently ignored. The OpenAI
shapes (``/v1/completions``, ``/v1/models``) follow OpenAI's API so that its Python client works unchanged.
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from secondthought.chains.text import reserved_token

MAX_FIELD_CHARS = 100_000
"""No text field is longer than this whatever the config says (the config's bounds are checked after parsing)."""
MAX_EDITS = 10_000
"""Nor a list of edits longer (the config's max_edits is checked after)."""


def _unicode(value: str) -> str:
    """Text that can be encoded: JSON lets a lone surrogate (\\ud800) through, which no tokenizer or answer takes."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"not valid Unicode: a lone surrogate at character {e.start}") from None
    return value


def _plain(value: str) -> str:
    """Text that goes into the model's prompt: valid Unicode, and none of the tokens that give the prompt its
    structure (a <|tgt|> in a text would end the text there and make the rest the model's answer)."""
    if token := reserved_token(_unicode(value)):
        raise ValueError(f"holds {token}, a token reserved for the model's prompt")
    return value


Unicode = Annotated[str, Field(max_length=MAX_FIELD_CHARS), AfterValidator(_unicode)]
Plain = Annotated[str, Field(max_length=MAX_FIELD_CHARS), AfterValidator(_plain)]
Stop = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_unicode)]
Prompt = Annotated[str, Field(min_length=1, max_length=MAX_FIELD_CHARS), AfterValidator(_unicode)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EditIn(_Strict):
    """One edit as a client sends it. ``old`` and ``new`` may be given with or without the space before a word."""

    op: Literal["ins", "del", "rep"]
    position: int = Field(ge=0, lt=10**9, description="0-based index of the source word the edit acts at")
    old: Plain = Field("", description="the source text it deletes or replaces (empty for an insert)")
    new: Plain = Field("", description="the text it writes (empty for a delete)")
    line: Optional[Unicode] = Field(None, description="ignored: an edit from a response can be sent back as it is")


class EditOut(BaseModel):
    op: Literal["ins", "del", "rep"]
    position: int
    old: str
    """Exactly as in the text, with the whitespace before each word (so edits can be sent back unchanged)."""
    new: str
    line: str
    """The edit in plain English."""


def _one_of_edits_or_chain(model, required: bool):
    if model.edits is not None and model.chain is not None:
        raise ValueError("give either edits or chain, not both")
    if required and model.edits is None and model.chain is None:
        raise ValueError("give edits (a list of {op, position, old, new}) or chain (serialized)")
    return model


class Generation(_Strict):
    """How the model decodes. The default is greedy: the same request always gets the same answer."""

    max_tokens: Optional[int] = Field(None, ge=1, description="most tokens to write (default and cap: server config)")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0: greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, le=1000, description="0: no top-k cut")
    seed: int = Field(0, ge=0, le=2**31 - 1)


class RealignRequest(_Strict):
    context: Plain = Field("", description="the situation, norm or intention the text is judged in")
    text: Plain = Field(min_length=1, description="the text to realign")
    edits: Optional[list[EditIn]] = Field(None, max_length=MAX_EDITS,
                                          description="a corrected first part of the chain: the model writes the rest "
                                                      "after it (interactive correction)")
    chain: Optional[Unicode] = Field(None, description="the same prefix, serialized")
    generation: Generation = Field(default_factory=Generation)

    @model_validator(mode="after")
    def _prefix(self):
        return _one_of_edits_or_chain(self, required=False)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class RealignResponse(BaseModel):
    edits: list[EditOut]
    chain: str
    """The whole chain, serialized with edit tokens whatever way the model writes chains (its own text when that
    cannot be read)."""
    explanation: str
    result: Optional[str]
    """The text with the chain applied (None when the chain does not apply)."""
    target: str
    """The text the model wrote after its chain."""
    applies: bool
    consistent: bool
    """The chain applied to the text gives exactly the written target."""
    valid: bool
    """The chain applies and changes something."""
    problem: str
    """Why the chain is not valid or not consistent (empty when it is both)."""
    edits_from: Literal["model", "derived", "diff"]
    """model: the model wrote the chain; derived: the model wrote its target straight away and the chain is the exact
    one to it (the default for a model trained with direct targets); diff: a targets-only model, edits computed from
    its target the same way."""
    model: str
    usage: Usage


class ApplyRequest(_Strict):
    text: Plain
    edits: Optional[list[EditIn]] = Field(None, max_length=MAX_EDITS)
    chain: Optional[Unicode] = None

    @model_validator(mode="after")
    def _edits(self):
        return _one_of_edits_or_chain(self, required=True)


class ApplyResponse(BaseModel):
    result: str
    edits: list[EditOut]
    chain: str
    explanation: str


class CompletionRequest(_Strict):
    """OpenAI's completion request, the fields this server implements."""

    model: Optional[Unicode] = None
    prompt: Union[Prompt, list[Prompt]]
    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=1, description="one completion per prompt")
    stream: bool = False
    stop: Union[Stop, list[Stop], None] = None
    seed: Optional[int] = Field(None, ge=0, le=2**31 - 1)
    user: Optional[Unicode] = None

    @model_validator(mode="after")
    def _prompts(self):
        if isinstance(self.prompt, list) and not 1 <= len(self.prompt) <= 16:
            raise ValueError("prompt: give 1 to 16 prompts")
        stops = [self.stop] if isinstance(self.stop, str) else self.stop or []
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop: at most 4 non-empty strings")
        return self

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
