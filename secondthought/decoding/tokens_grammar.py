"""Decoding constrained to the source for chains written with edit tokens (``chains.edits.serialize``). The grammar
of a completion, with the source's units U:

    edit (" " edit)* <|tgt|> target <eos>
    edit = <|ins|> " p" new | <|del|> " p" U[p..q] | <|rep|> " p" U[p..q] " " <|with|> new

where a position p is at least where the previous edit ended (an insert up to len(U), a delete or replace
below it), the removed text is the source's own units there (forced, not sampled), new text is free text that
starts with whitespace and holds no marker, at least one edit comes before ``<|tgt|>`` and the chain must
change the source. With ``force_target`` the target is forced to ``apply(source, chain)`` as the tokenizer spells
it (the training text's tokens), else free text. No Ray.
"""

from __future__ import annotations

from secondthought.chains.edits import DEL, INS, REP, WITH, Edit
from secondthought.decoding.machine import ChainMachine, Free, Lit, Special, Then


class TokensConstraint(ChainMachine):
    """One row's constraint for a model that writes chains with edit tokens."""

    def _markers(self, chain: tuple[Edit, ...]) -> list:
        special = self.table.special
        items = [Special(special[INS], lambda: self._positions(chain, "ins"), chain, opens=True)]
        if self._cursor(chain) < len(self.units):
            items += [Special(special[DEL], lambda: self._positions(chain, "del"), chain, opens=True),
                      Special(special[REP], lambda: self._positions(chain, "rep"), chain, opens=True)]
        return items

    def _positions(self, chain: tuple[Edit, ...], op: str) -> list:
        last = len(self.units) if op == "ins" else len(self.units) - 1
        return [Lit(f" {p}".encode(), self._after_position(chain, op, p), chain)
                for p in range(self._cursor(chain), last + 1)]

    def _after_position(self, chain: tuple[Edit, ...], op: str, p: int) -> Then:
        if op == "ins":
            return lambda: [Free(chain, Edit("ins", p))]
        return lambda: [Lit(self.units[p].encode(), lambda: self._removed(chain, op, p, 1), chain)]

    def _removed(self, chain: tuple[Edit, ...], op: str, p: int, span: int) -> list:
        """After ``span`` source units from ``p`` were written as removed text: one more, or the end of it."""
        items = []
        if p + span < len(self.units):
            items.append(Lit(self.units[p + span].encode(), lambda: self._removed(chain, op, p, span + 1), chain,
                             opens=True))
        old = "".join(self.units[p : p + span])
        if op == "rep":
            items.append(Lit(b" ", lambda: [Special(self.table.special[WITH],
                                                    lambda: [Free(chain, Edit("rep", p, old))], chain)], chain))
        else:
            done = chain + (Edit("del", p, old),)
            items.append(Lit(b" ", lambda: self._markers(done), done, opens=True))
            items += self._target_marker(done)
        return items
