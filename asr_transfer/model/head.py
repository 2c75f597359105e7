"""The CTC head swap: a new ``lm_head`` for the target vocabulary, started from the English rows where letters match.

``mapped`` copies rows of symbols both vocabularies share (case-insensitively: base-960h is upper-case), seeds new
letters from the language's base-letter map (ä←a, ß←s, é←e …) and draws the rest; ``random`` draws every row;
``keep`` requires equal vocabularies (same-language domain adaptation).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..text import BASE_LETTERS

HEAD_MODES = ("mapped", "random", "keep")


@dataclass(frozen=True)
class HeadSwapReport:
    """Where each row of the new CTC head came from."""

    mode: str
    copied: tuple[str, ...]  # target tokens whose source row was copied (case-insensitive match)
    seeded: tuple[tuple[str, str], ...]  # (target token, base letter(s)) rows copied from a base letter
    random: tuple[str, ...]  # target tokens initialised randomly

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "copied": list(self.copied),
            "seeded": dict(self.seeded),
            "random": list(self.random),
        }

    def summary(self) -> str:
        seeded = ", ".join(f"{t}←{b}" for t, b in self.seeded) or "none"
        return (f"head {self.mode}: {len(self.copied)} copied, {len(self.seeded)} seeded ({seeded}), "
                f"{len(self.random)} random ({' '.join(self.random) or 'none'})")


def _folded(vocab: dict[str, int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for token, i in vocab.items():
        out.setdefault(token.lower(), i)
    return out


def swap_head(model: nn.Module, source_vocab: dict[str, int], target_vocab: dict[str, int], mode: str = "mapped",
              lang: str = "de", base_letters: dict[str, str] | None = None, seed: int = 0) -> HeadSwapReport:
    """Replace ``model.lm_head`` by a ``Linear(hidden, len(target_vocab))`` for the target vocabulary.

    ``mapped``: rows (weight and bias) of tokens the source has (case-insensitive, specials included) are copied;
    new letters copy their base letter's row (ä←a; a multi-letter base averages its rows); the rest are random
    (normal(0, initializer_range), bias 0, from ``seed``). ``random``: all rows random. ``keep``: the vocabularies
    must be equal up to case and the head is left alone. Updates ``config.vocab_size`` and pad/bos/eos ids.
    """
    if mode not in HEAD_MODES:
        raise ConfigError(f"unknown head init {mode!r}; use one of {', '.join(HEAD_MODES)}")
    if "<pad>" not in target_vocab:
        raise ConfigError("target vocabulary has no '<pad>' (CTC blank) token")
    if sorted(target_vocab.values()) != list(range(len(target_vocab))):
        raise ConfigError("target vocabulary ids are not 0..N-1 without gaps")
    old = model.lm_head
    src = _folded(source_vocab)
    if mode == "keep":
        if {t.lower(): i for t, i in target_vocab.items()} != {t.lower(): i for t, i in source_vocab.items()}:
            raise ConfigError("head init 'keep' needs the target vocabulary to equal the source one (up to case); "
                              "use 'mapped'")
        set_vocab_config(model.config, target_vocab)
        return HeadSwapReport("keep", tuple(sorted(target_vocab, key=target_vocab.get)), (), ())
    if len(source_vocab) != old.out_features:
        raise ConfigError(f"source vocabulary has {len(source_vocab)} tokens but the head has {old.out_features} rows")
    if base_letters is None and mode == "mapped":
        base_letters = BASE_LETTERS.get(lang, {})
    new = nn.Linear(old.in_features, len(target_vocab), device=old.weight.device, dtype=old.weight.dtype)
    generator = torch.Generator().manual_seed(seed)
    std = float(getattr(model.config, "initializer_range", 0.02))
    copied, seeded, random_ = [], [], []
    with torch.no_grad():
        weight = torch.randn(new.weight.shape, generator=generator, dtype=torch.float32) * std
        new.weight.copy_(weight.to(new.weight))
        new.bias.zero_()
        for token, i in sorted(target_vocab.items(), key=lambda kv: kv[1]):
            if mode == "random":
                random_.append(token)
                continue
            if token.lower() in src:
                j = src[token.lower()]
                new.weight[i] = old.weight[j]
                new.bias[i] = old.bias[j]
                copied.append(token)
                continue
            base = (base_letters or {}).get(token, (base_letters or {}).get(token.lower()))
            rows = [src.get(ch.lower()) for ch in base] if base else []
            if rows and all(r is not None for r in rows):
                new.weight[i] = old.weight[rows].mean(0) if len(rows) > 1 else old.weight[rows[0]]
                new.bias[i] = old.bias[rows].mean(0) if len(rows) > 1 else old.bias[rows[0]]
                seeded.append((token, base))
            else:
                random_.append(token)
    model.lm_head = new
    set_vocab_config(model.config, target_vocab)
    return HeadSwapReport(mode, tuple(copied), tuple(seeded), tuple(random_))


def set_vocab_config(config, vocab: dict[str, int]) -> None:
    folded = _folded(vocab)
    config.vocab_size = len(vocab)
    config.pad_token_id = folded["<pad>"]
    config.bos_token_id = folded.get("<s>")
    config.eos_token_id = folded.get("</s>")
