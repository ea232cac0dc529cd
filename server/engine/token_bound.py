"""A lower bound on the tokens a text holds, from its length alone: a prompt far too long for the context is refused
before it is tokenized.

Tokenizing is the costliest work a request does before its tokens meet the context check and its key's TPM, and it
grows with the text in ways a client chooses (a body-limit's worth of one repeated character costs many times what as
much prose does). But a token stands for at most as many bytes as the vocabulary's longest, and a character is at
least one byte, so a text of `c` characters holds at least `c / longest` tokens. That holds for vocabularies whose
tokens cover every byte of the text (SentencePiece's and byte-level BPE's, with or without special tokens parsed);
WordPiece and Unigram ones normalize text and may drop characters, so they get no bound. Where a special token strips
the whitespace beside it (llama.cpp's lstrip/rstrip attributes), whitespace may vanish and is not counted.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.engine.base import ContextOverflowError
from server.engine.control_text import WHITESPACE


@dataclass(frozen=True, slots=True)
class TokenBound:
    longest_token_bytes: int = 0  # 0: the vocabulary gives no bound
    whitespace_may_vanish: bool = False

    def at_least(self, text: str) -> int:
        """A number of tokens `text` holds at least; 0 when nothing can be said."""
        if self.longest_token_bytes <= 0:
            return 0
        counted = len(text)
        if self.whitespace_may_vanish:
            counted -= sum(text.count(char) for char in WHITESPACE)
        return -(-counted // self.longest_token_bytes)

    def check(self, text: str, *, n_ctx: int, param: str, what: str = "the prompt") -> None:
        """Refuse `text` if it certainly holds `n_ctx` tokens or more, as the engine would once it is tokenized (the
        same error, which says the count is a lower bound)."""
        least = self.at_least(text)
        if least >= n_ctx:
            raise ContextOverflowError(
                f"this model's context is {n_ctx} tokens, but {what} has at least {least}",
                param=param,
                code="context_length_exceeded",
            )
