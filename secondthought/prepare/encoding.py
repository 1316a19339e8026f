"""Training examples from triples: chains for every cost set -> training text -> token ids.

Pure (no Ray): the prepare stage runs :func:`build` on each block of triples.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import chain as chain_all
from typing import Sequence

import pyarrow as pa

from secondthought.chains.edits import DEL, INS, REP, WITH, Costs, EditChain, augment
from secondthought.chains.formats import EditFormat
from secondthought.chains.text import SEP, SRC, TGT, completion, prompt
from secondthought.data.schema import Rejected, Triple

EXAMPLE_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("dataset", pa.string()),
    ("split", pa.string()),
    ("direction", pa.string()),
    ("context", pa.string()),
    ("source", pa.string()),
    ("target", pa.string()),
    ("costs", pa.list_(pa.float64())),
    ("chain", pa.string()),
    ("n_edits", pa.int32()),
    ("prompt_len", pa.int32()),
    ("input_ids", pa.list_(pa.int32())),
    ("records", pa.list_(pa.string())),
    ("metadata", pa.string()),
])

_PLAIN = re.compile(r"\S+(?: \S+)*")
_UNIT = re.compile(r"\s*\S+|\s+")
_CACHE_LIMIT = 1_000_000


@dataclass(frozen=True)
class Example:
    triple: Triple
    direction: str
    source: str
    target: str
    chain: EditChain


def chains_of(triple: Triple, cost_sets: Sequence[Costs], reverse: bool) -> list[Example]:
    pairs = [("forward", triple.source, triple.target)]
    if reverse:
        pairs.append(("reverse", triple.target, triple.source))
    return [
        Example(triple, direction, source, target, chain)
        for direction, source, target in pairs
        for chain in augment(source, target, cost_sets)
    ]


class Encoder:
    """Token ids of ``prompt + completion + eos`` for a batch of examples, fast.

    Byte-level BPE tokenizers split text at special tokens and then into pre-tokens that never
    cross a space-before-word boundary. So for plain texts (single spaces, no leading or trailing
    whitespace) the ids of the whole training text are the ids of its words (with the space
    before them) and of the chain's markers and positions, joined. Each distinct word is
    tokenized once and cached, which is several times faster than tokenizing every text. A
    probe checks that this holds for
    the tokenizer at hand; texts with unusual whitespace, and tokenizers that fail the probe,
    get the whole text tokenized instead.
    """

    def __init__(self, tokenizer, fmt: EditFormat):
        self.tokenizer, self.format = tokenizer, fmt
        self.backend = tokenizer.backend_tokenizer
        self.eos_id = tokenizer.eos_token_id
        self.special = dict(zip((SRC, SEP, TGT, INS, DEL, REP, WITH),
                                tokenizer.convert_tokens_to_ids([SRC, SEP, TGT, INS, DEL, REP, WITH])))
        self.cache: dict[str, list[int]] = {}
        self.by_pieces = True
        probe = [
            ("Be kind. Tom sees a dog.", "Tom kicks the dog, don't he?", "Tom pets the dog 3 times."),
            ("", "I'm 12.5% sure: it's (very) good!", "Ok... I  agree\u00e9 \u65e5\u672c 42"),
            ("", 'He said "no" (twice) to me.', 'He said "yes" to "me".'),
        ]
        examples = [(c, s, t, augment(s, t, [(1, 1, 1)])[0]) for c, s, t in probe]
        self.by_pieces = self.encode_many(examples) == [self.whole(*e) for e in examples]

    def _ids(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch_fast(texts, add_special_tokens=False)] if texts else []

    def whole(self, context: str, source: str, target: str, chain: EditChain,
              text: str | None = None) -> tuple[list[int], int]:
        """``text``: the chain as written (when the caller has it already)."""
        head = prompt(context, source)
        text = text if text is not None else self.format.write(chain, source)
        head_ids, ids = self._ids([head, head + completion(text, target)])
        return ids + [self.eos_id], len(head_ids)

    def encode_many(self, examples: list[tuple[str, str, str, EditChain]],
                    texts: list[str] | None = None) -> list[tuple[list[int], int]]:
        """(input_ids, prompt_len) for each (context, source, target, chain); ``texts``: each chain as written
        (written here when not given)."""
        if texts is None:
            texts = [self.format.write(chain, source) for _, source, _, chain in examples]
        plain: dict[str, bool] = {}
        for context, source, target, _ in examples:
            for text in (context, source, target):
                if text not in plain:
                    plain[text] = self.by_pieces and (not text and text is context or bool(_PLAIN.fullmatch(text)))
        fast = [plain[c] and plain[s] and plain[t] for c, s, t, _ in examples]
        layouts = [self.format.layout(chain, text, self.special) if ok else None
                   for (_, _, _, chain), text, ok in zip(examples, texts, fast)]
        if len(self.cache) > _CACHE_LIMIT:
            self.cache.clear()
        cache = self.cache
        strings = {p for layout in layouts if layout for p in layout if type(p) is str} | plain.keys()
        units = {text: _UNIT.findall(text) for text in strings}
        missing = list(set(chain_all.from_iterable(units.values())) - cache.keys())
        cache.update(zip(missing, self._ids(missing)))
        lookup = cache.__getitem__
        found = {text: list(chain_all.from_iterable(map(lookup, us))) for text, us in units.items()}
        src, sep, tgt, eos = self.special[SRC], self.special[SEP], self.special[TGT], self.eos_id
        out = []
        for (context, source, target, chain), text, layout in zip(examples, texts, layouts):
            if layout is None:
                out.append(self.whole(context, source, target, chain, text))
                continue
            ids = found[context] + [src] + found[source] + [sep]
            prompt_len = len(ids)
            for piece in layout:
                if type(piece) is str:
                    ids += found[piece]
                else:
                    ids.append(piece)
            ids.append(tgt)
            ids += found[target]
            ids.append(eos)
            out.append((ids, prompt_len))
        return out


def build(triples: list[Triple], cost_sets: Sequence[Costs], reverse: bool, encoder: Encoder,
          max_tokens: int) -> tuple[pa.Table, list[Rejected]]:
    """Example rows (one per distinct chain) for the triples, and the triples rejected here."""
    examples = [ex for triple in triples for ex in chains_of(triple, cost_sets, reverse)]
    texts = [encoder.format.write(ex.chain, ex.source) for ex in examples]  # once: words are O(n^2)
    encoded = encoder.encode_many([(ex.triple.context, ex.source, ex.target, ex.chain) for ex in examples], texts)
    too_long = {id(ex.triple): len(ids) for ex, (ids, _) in zip(examples, encoded) if len(ids) > max_tokens}
    rejected = [
        Rejected.of(record, f"too long: {too_long[id(triple)]} tokens > max_tokens {max_tokens}")
        for triple in triples if id(triple) in too_long for record in triple.records
    ]
    kept = [k for k, ex in enumerate(examples) if id(ex.triple) not in too_long]
    rows = [examples[k] for k in kept]
    columns = {
        "id": [ex.triple.id for ex in rows],
        "dataset": [ex.triple.dataset for ex in rows],
        "split": [ex.triple.split for ex in rows],
        "direction": [ex.direction for ex in rows],
        "context": [ex.triple.context for ex in rows],
        "source": [ex.source for ex in rows],
        "target": [ex.target for ex in rows],
        "costs": [ex.chain.costs for ex in rows],
        "chain": [texts[k] for k in kept],
        "n_edits": [len(ex.chain) for ex in rows],
        "prompt_len": [encoded[k][1] for k in kept],
        "input_ids": [encoded[k][0] for k in kept],
        "records": [[f"{r.file}:{r.line}" for r in ex.triple.records] for ex in rows],
        "metadata": [ex.triple.metadata for ex in rows],
    }
    return pa.table(columns, schema=EXAMPLE_SCHEMA), rejected
