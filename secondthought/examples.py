"""Training examples from triples: chains for every cost set -> training text -> token ids.

Pure (no Ray): the prepare stage runs :func:`build` on each block of triples.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

import pyarrow as pa

from secondthought.data.schema import Rejected, Triple
from secondthought.edits import Costs, EditChain, augment, serialize
from secondthought.formatting import SEP, SRC, TGT, completion, prompt

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


@dataclass(frozen=True)
class Example:
    triple: Triple
    direction: str
    source: str
    target: str
    chain: EditChain
    chain_text: str


def chains_of(triple: Triple, cost_sets: Sequence[Costs], reverse: bool) -> list[Example]:
    pairs = [("forward", triple.source, triple.target)]
    if reverse:
        pairs.append(("reverse", triple.target, triple.source))
    return [
        Example(triple, direction, source, target, chain, serialize(chain))
        for direction, source, target in pairs
        for chain in augment(source, target, cost_sets)
    ]


class Encoder:
    """Token ids of ``prompt + completion + eos``, tokenizing each distinct piece once.

    Special tokens split the text before any other tokenization, so encoding context, source,
    chain and target separately and joining them with the special tokens' ids gives the same
    ids as encoding the whole text. That is checked once on a probe; a tokenizer for which it
    does not hold gets the whole text encoded instead.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        ids = tokenizer.convert_tokens_to_ids([SRC, SEP, TGT])
        self.src_id, self.sep_id, self.tgt_id = ids
        self.eos_id = tokenizer.eos_token_id
        self.piecewise = True
        probe = ("Be kind. Tom sees a dog.", " Tom kicks the dog.", "<|rep|> 1 kicks <|with|> pets", "Tom pets the dog.")
        self.piecewise = self.encode_many([probe])[0] == self._whole(*probe)

    def _encode(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []

    def _whole(self, context: str, source: str, chain_text: str, target: str) -> tuple[list[int], int]:
        head = self._encode([prompt(context, source)])[0]
        ids = self._encode([prompt(context, source) + completion(chain_text, target)])[0]
        return ids + [self.eos_id], len(head)

    def encode_many(self, items: list[tuple[str, str, str, str]]) -> list[tuple[list[int], int]]:
        """(input_ids, prompt_len) for each (context, source, chain_text, target)."""
        if not self.piecewise:
            return [self._whole(*item) for item in items]
        distinct = list(dict.fromkeys(text for item in items for text in item))
        ids = dict(zip(distinct, self._encode(distinct)))
        out = []
        for context, source, chain_text, target in items:
            head = ids[context] + [self.src_id] + ids[source] + [self.sep_id]
            out.append((head + ids[chain_text] + [self.tgt_id] + ids[target] + [self.eos_id], len(head)))
        return out


def build(triples: list[Triple], cost_sets: Sequence[Costs], reverse: bool, encoder: Encoder,
          max_tokens: int) -> tuple[pa.Table, list[Rejected]]:
    """Example rows (one per distinct chain) for the triples, and the triples rejected here."""
    examples = [ex for triple in triples for ex in chains_of(triple, cost_sets, reverse)]
    encoded = encoder.encode_many([(ex.triple.context, ex.source, ex.chain_text, ex.target) for ex in examples])
    too_long = {id(ex.triple): len(ids) for ex, (ids, _) in zip(examples, encoded) if len(ids) > max_tokens}
    rejected = [
        Rejected.of(record, f"too long: {too_long[id(triple)]} tokens > max_tokens {max_tokens}")
        for triple in triples if id(triple) in too_long for record in triple.records
    ]
    kept = [(ex, enc) for ex, enc in zip(examples, encoded) if id(ex.triple) not in too_long]
    metadata = {id(t): json.dumps(t.metadata, ensure_ascii=False, default=str) for t in triples}
    columns = {
        "id": [ex.triple.id for ex, _ in kept],
        "dataset": [ex.triple.dataset for ex, _ in kept],
        "split": [ex.triple.split for ex, _ in kept],
        "direction": [ex.direction for ex, _ in kept],
        "context": [ex.triple.context for ex, _ in kept],
        "source": [ex.source for ex, _ in kept],
        "target": [ex.target for ex, _ in kept],
        "costs": [list(ex.chain.costs) for ex, _ in kept],
        "chain": [ex.chain_text for ex, _ in kept],
        "n_edits": [len(ex.chain) for ex, _ in kept],
        "prompt_len": [prompt_len for _, (_, prompt_len) in kept],
        "input_ids": [ids for _, (ids, _) in kept],
        "records": [[f"{r.file}:{r.line}" for r in ex.triple.records] for ex, _ in kept],
        "metadata": [metadata[id(ex.triple)] for ex, _ in kept],
    }
    return pa.table(columns, schema=EXAMPLE_SCHEMA), rejected
