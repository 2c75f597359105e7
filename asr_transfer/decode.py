"""CTC decoding: log-probabilities → :class:`Hypothesis` (text, word timings, score).

Two decoders share one output type:

* :class:`GreedyDecoder` — argmax per frame, collapse repeats, drop blanks. Fast, no dependencies, the baseline.
* :class:`BeamDecoder` — flashlight-text's CTC beam search through ``torchaudio.models.decoder.ctc_decoder``, with an
  optional lexicon (closed vocabulary) and an optional KenLM n-gram LM (built by :mod:`asr_transfer.lm`).

Conventions (both decoders):

* Input is ``(frames, vocab)`` float32 log-softmax output (numpy or torch), one frame per ``FRAME_STRIDE_S`` (20 ms).
  ``frame_offset_s`` is added to every time, so chunked transcription can place chunk results on the file's timeline.
* Tokens are case-folded to lower case, so an upper-case English vocabulary (base-960h) decodes to the same text.
* ``|`` is the word delimiter; leading, trailing and repeated delimiters never produce empty words or double spaces.
* ``<s>``, ``</s>``, ``<unk>`` are never part of the text. Greedy drops them after collapsing (so ``a <unk> a``
  reads ``aa``: they still separate repeats, as in the HF tokenizer); beam search gives them ``-inf`` so it never
  chooses them. ``<unk>`` is dropped rather than rendered because a literal ``<unk>`` word would be scored as a
  substitution anyway and cannot be transcribed by a user.
* Word timing: ``start_s`` = first frame of the word's first token, ``end_s`` = last frame of its last token + 1
  frame (a token's frames are the frame that emits it plus the frames that repeat it). ``confidence`` = mean over
  those emitting frames of the probability of the chosen token (for greedy: ``exp(max log-prob)``), in [0, 1].
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sys
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .audio import FRAME_STRIDE_S
from .errors import PARSE_ERRORS, UserError

WORD_DELIMITER = "|"  # same value as vocab.WORD_DELIMITER; kept local so decoding does not import the text stack
SPECIAL_RE = re.compile(r"^<[^<>]+>$")  # <s>, </s>, <unk>, <pad>, ...


@dataclass(frozen=True)
class WordTiming:
    word: str
    start_s: float  # s, on the caller's timeline (frame_offset_s included)
    end_s: float  # s, exclusive
    confidence: float  # mean probability of the word's emitting frames, in [0, 1]


@dataclass(frozen=True)
class Hypothesis:
    text: str  # lower case, words joined by single spaces, no leading/trailing space
    words: tuple[WordTiming, ...]
    score: float  # greedy: sum of per-frame max log-probs; beam: flashlight's total (acoustic + weighted LM + bonuses)
    tokens: tuple[int, ...] = ()  # model vocabulary ids of the collapsed path (blanks removed; "|" and specials kept)


@dataclass(frozen=True)
class DecodeOptions:
    """What evaluate / transcribe / tune-lm pass around to build a decoder (recorded in summary.json)."""

    kind: str = "greedy"  # "greedy" | "beam"
    beam_size: int = 50
    lm_dir: str | None = None  # folder from `asr-transfer lm`; None = no LM
    lm_weight: float = 2.0  # alpha: weight of the LM log-probability (flashlight/torchaudio default)
    word_score: float = 0.0  # beta: bonus per emitted word (counters the LM's preference for few words)
    lexicon: str | None = None  # path, None (from lm_dir, else lexicon-free) or "none" (force lexicon-free)
    beam_threshold: float = 50.0
    unk_score: float = float("-inf")
    sil_score: float = 0.0

    def __post_init__(self):
        check_decoder(self.kind, self.lm_dir)
        if self.kind == "beam" and not (isinstance(self.beam_size, int) and self.beam_size >= 1):
            raise UserError(f"the beam size must be a whole number >= 1; got {self.beam_size!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["unk_score"] = None if math.isinf(self.unk_score) else self.unk_score  # JSON has no -inf
        return d

    def build(self, vocab: Sequence[str], blank_id: int = 0) -> "GreedyDecoder | BeamDecoder":
        if self.kind == "greedy":
            return GreedyDecoder(vocab, blank_id=blank_id)
        return make_decoder(
            self.kind, vocab, blank_id=blank_id, lm_dir=self.lm_dir, beam_size=self.beam_size,
            lm_weight=self.lm_weight, word_score=self.word_score, lexicon=self.lexicon,
            beam_threshold=self.beam_threshold, unk_score=self.unk_score, sil_score=self.sil_score,
        )


def _as_numpy(log_probs) -> np.ndarray:
    """``(frames, vocab)`` numpy/torch → C-contiguous float32 numpy on the CPU."""
    if hasattr(log_probs, "detach"):  # torch.Tensor, without importing torch here
        log_probs = log_probs.detach().float().cpu().numpy()
    x = np.ascontiguousarray(log_probs, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"log_probs must be (frames, vocab), got shape {x.shape}")
    return x


@dataclass
class _Word:
    letters: list[str] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)  # emitting frames of all its tokens
    label: str | None = None  # the lexicon word, when the beam search emitted one


def _words_from_path(
    path: np.ndarray,
    frame_probs: np.ndarray,
    symbols: Sequence[str],
    kinds: Sequence[str],
    blank_id: int,
    frame_offset_s: float,
    word_ids: np.ndarray | None = None,
    word_labels: Sequence[str] | None = None,
) -> tuple[tuple[WordTiming, ...], tuple[int, ...]]:
    """Turn a per-frame token path into word timings and the collapsed token ids.

    ``path``: ``(frames,)`` token id per frame; ``frame_probs``: ``(frames,)`` probability of that token;
    ``kinds[i]`` is "letter", "delim" or "special". ``word_ids`` (lexicon beam search) marks the frame at which a word
    is completed (>= 0) — words then end there even without a delimiter.
    """
    words: list[_Word] = []
    current: _Word | None = None  # word receiving letters
    owner: _Word | None = None  # word owning the last emitted token (repeats extend it)
    tokens: list[int] = []
    prev = blank_id
    for t, k in enumerate(path.tolist()):
        if k == blank_id:
            pass
        elif k == prev:  # a repeat continues the previous emission
            if owner is not None:
                owner.frames.append(t)
        else:
            tokens.append(k)
            kind = kinds[k]
            owner = None
            if kind == "delim":
                current = None
            elif kind == "letter":
                if current is None:
                    current = _Word()
                    words.append(current)
                current.letters.append(symbols[k])
                current.frames.append(t)
                owner = current
        if word_ids is not None and word_ids[t] >= 0:
            # Flashlight completes a word on its last letter; attach the lexicon word to the letters read so far.
            target = current if current is not None else (words[-1] if words and words[-1].label is None else None)
            if target is not None:
                label = word_labels[word_ids[t]]
                target.label = None if SPECIAL_RE.match(label) else label
            current = None  # the next letter starts a new word
        prev = k
    out = []
    for w in words:
        text = w.label or "".join(w.letters)
        if not text:
            continue
        start = frame_offset_s + w.frames[0] * FRAME_STRIDE_S
        end = frame_offset_s + (w.frames[-1] + 1) * FRAME_STRIDE_S
        conf = float(np.mean(frame_probs[w.frames]))
        out.append(WordTiming(text, round(start, 6), round(end, 6), min(1.0, max(0.0, conf))))
    return tuple(out), tuple(tokens)


def _token_kinds(vocab: Sequence[str], blank_id: int, delimiter: str) -> tuple[list[str], list[str]]:
    """Case-folded symbols and their kind ("blank", "delim", "special", "letter") per vocabulary id."""
    symbols, kinds = [], []
    for i, tok in enumerate(vocab):
        if i == blank_id:
            kinds.append("blank")
        elif tok == delimiter:
            kinds.append("delim")
        elif SPECIAL_RE.match(tok):
            kinds.append("special")
        else:
            kinds.append("letter")
        symbols.append(tok if SPECIAL_RE.match(tok) else tok.lower())
    return symbols, kinds


def _checked_log_probs(log_probs, vocab_size: int) -> np.ndarray:
    """``(frames, vocab)`` as numpy, with a clear error when the columns do not match the vocabulary."""
    x = _as_numpy(log_probs)
    if x.shape[1] != vocab_size:
        raise ValueError(f"log_probs has {x.shape[1]} columns but the vocabulary has {vocab_size} tokens")
    return x


class GreedyDecoder:
    """Best path decoding: argmax per frame, collapse repeats, drop blanks and specials."""

    def __init__(self, vocab: Sequence[str], blank_id: int = 0, delimiter: str = WORD_DELIMITER):
        if not 0 <= blank_id < len(vocab):
            raise ValueError(f"blank_id {blank_id} outside the vocabulary (size {len(vocab)})")
        self.vocab = list(vocab)
        self.blank_id = blank_id
        self.symbols, self.kinds = _token_kinds(self.vocab, blank_id, delimiter)

    def decode(self, log_probs, frame_offset_s: float = 0.0) -> Hypothesis:
        """``log_probs``: ``(frames, vocab)`` log-softmax; returns the best-path :class:`Hypothesis`."""
        x = _checked_log_probs(log_probs, len(self.vocab))
        if x.shape[0] == 0:
            return Hypothesis("", (), 0.0)
        path = x.argmax(axis=1)
        best = x[np.arange(x.shape[0]), path]
        words, tokens = _words_from_path(path, np.exp(best), self.symbols, self.kinds, self.blank_id, frame_offset_s)
        return Hypothesis(" ".join(w.word for w in words), words, float(best.sum()), tokens)

    def decode_batch(self, batch: Sequence, frame_offsets_s: Sequence[float] | None = None) -> list[Hypothesis]:
        offsets = frame_offsets_s or [0.0] * len(batch)
        return [self.decode(x, o) for x, o in zip(batch, offsets)]


def _import_ctc_decoder():
    # torchaudio has announced the end of some APIs; silence only a deprecation notice for this import, nothing else.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*deprecat.*", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        from torchaudio.models.decoder import ctc_decoder
    return ctc_decoder


@contextlib.contextmanager
def _quiet_native_stderr():
    """Hold back what C++ code (KenLM's loading progress bar) writes to fd 2; replay it only if loading fails."""
    try:
        saved = os.dup(2)
    except OSError:  # no real fd 2 (embedded interpreters): nothing to silence
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        ok = False
        try:
            yield
            ok = True
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if not ok:
                sink.seek(0)
                sys.stderr.write(sink.read().decode("utf-8", "replace"))


def find_lm_files(lm_dir: str | Path) -> tuple[Path, Path | None]:
    """The KenLM model (``lm.bin`` preferred over ``lm.arpa``) and the lexicon (``lexicon.txt``, if present)."""
    lm_dir = Path(lm_dir)
    if not lm_dir.is_dir():
        raise UserError("LM folder not found; build one with `asr-transfer lm`", path=lm_dir)
    for name in ("lm.bin", "lm.arpa"):
        if (lm_dir / name).is_file():
            lexicon = lm_dir / "lexicon.txt"
            return lm_dir / name, lexicon if lexicon.is_file() else None
    raise UserError("LM folder has neither lm.bin nor lm.arpa; build one with `asr-transfer lm`", path=lm_dir)


def arpa_unigrams(arpa_path: str | Path) -> list[str]:
    """Words of the ``\\1-grams:`` section of an ARPA file, without ``<s>``, ``</s>``, ``<unk>``."""
    words, inside = [], False
    with open(arpa_path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line.startswith("\\"):
                if inside:
                    break
                inside = line == "\\1-grams:"
                continue
            if inside and line:
                parts = line.split()
                if len(parts) >= 2 and not SPECIAL_RE.match(parts[1]):
                    words.append(parts[1])
    return words


def lexicon_lines(words: Sequence[str], letters: set[str]) -> tuple[list[str], list[str]]:
    """Flashlight lexicon lines ``word w o r d`` for words spelled only with ``letters``; returns (lines, skipped).

    The spelling has no trailing ``|``: our models emit ``|`` only between words, and flashlight then cannot close an
    utterance's last word (verified: it forces the final frames to ``|`` or another word).
    """
    lines, skipped = [], []
    for w in words:
        if w and all(c in letters for c in w):
            lines.append(f"{w} {' '.join(w)}")
        else:
            skipped.append(w)
    return lines, skipped


class BeamDecoder:
    """CTC beam search (flashlight-text via torchaudio) with optional lexicon and KenLM n-gram LM.

    * ``lm_dir`` given: the word LM is used with a lexicon — ``lexicon`` if given, else ``lm_dir/lexicon.txt``, else
      one derived from the ARPA unigrams. Flashlight's lexicon-free decoder scores the LM per *token*, which is
      meaningless for a word LM, so ``lexicon="none"`` together with an LM is refused.
    * No ``lm_dir``: lexicon-constrained search if ``lexicon`` is a path, otherwise lexicon-free (equals greedy up to
      path merging: CTC prefix beam search without LM).

    With a lexicon the output is closed-vocabulary: words outside it cannot be produced (``unk_score`` > -inf lets
    flashlight emit ``<unk>`` in theory; its letters are then used as the word).
    """

    def __init__(
        self,
        vocab: Sequence[str],
        lm_dir: str | Path | None = None,
        lexicon: str | Path | None = None,
        beam_size: int = 50,
        lm_weight: float = 2.0,
        word_score: float = 0.0,
        blank_id: int = 0,
        beam_threshold: float = 50.0,
        unk_score: float = float("-inf"),
        sil_score: float = 0.0,
        delimiter: str = WORD_DELIMITER,
    ):
        if beam_size < 1:
            raise UserError(f"beam size must be >= 1, got {beam_size}")
        self.vocab = list(vocab)
        self.blank_id = blank_id
        self.symbols, self.kinds = _token_kinds(self.vocab, blank_id, delimiter)
        if delimiter not in self.vocab:
            raise UserError(f"the vocabulary has no word delimiter '{delimiter}'; beam search needs one")
        self._tempdir = tempfile.TemporaryDirectory(prefix="asr-transfer-lex-")
        tokens, self._merge = self._flashlight_tokens()
        lm_path, lexicon_path = None, None
        if lm_dir is not None:
            lm_path, lexicon_path = find_lm_files(lm_dir)
        if isinstance(lexicon, str) and lexicon.lower() in ("none", "free"):
            if lm_path is not None:
                raise UserError("lexicon-free decoding cannot use a word LM (flashlight scores it per token); "
                                "drop --lexicon none or the LM")
            lexicon_path = None
        elif lexicon is not None:
            lexicon_path = Path(lexicon)
            if not lexicon_path.is_file():
                raise UserError("lexicon file not found", path=lexicon_path)
        if lm_path is not None and lexicon_path is None:
            lexicon_path = self._lexicon_from_arpa(lm_path)
        if lexicon_path is not None:
            lexicon_path = self._checked_lexicon(lexicon_path)
        ctc_decoder = _import_ctc_decoder()
        try:
            with _quiet_native_stderr():
                self._decoder = ctc_decoder(
                    lexicon=str(lexicon_path) if lexicon_path else None,
                    tokens=tokens,
                    lm=str(lm_path) if lm_path else None,
                    nbest=1,
                    beam_size=beam_size,
                    beam_threshold=beam_threshold,
                    lm_weight=lm_weight,
                    word_score=word_score,
                    unk_score=unk_score,
                    sil_score=sil_score,
                    blank_token=tokens[blank_id],
                    sil_token=delimiter,
                    unk_word="<unk>",
                )
        except RuntimeError as exc:
            raise UserError(f"cannot build the beam decoder ({exc})", path=lm_path or lexicon_path) from None
        self.lm_path, self.lexicon_path = lm_path, lexicon_path
        self._word_labels = (
            [self._decoder.word_dict.get_entry(i) for i in range(self._decoder.word_dict.index_size())]
            if lexicon_path
            else []
        )

    def _flashlight_tokens(self) -> tuple[list[str], list[tuple[int, int]]]:
        """Flashlight token names in model column order (lower-cased letters, unique).

        Two columns that case-fold to one letter (``A``/``a``) are merged: ``(keep, drop)`` pairs; the dropped column's
        probability is added to the kept one and the dropped gets a private name and -inf.
        """
        names, seen, merge = [], {}, []
        for i, (sym, kind) in enumerate(zip(self.symbols, self.kinds)):
            name = self.vocab[i] if kind in ("blank", "special", "delim") else sym
            if name in seen:
                merge.append((seen[name], i))
                name = f"<dup{i}>"
            seen[name] = i
            names.append(name)
        return names, merge

    def _lexicon_from_arpa(self, lm_path: Path) -> Path:
        if lm_path.suffix != ".arpa":
            raise UserError("a binary LM needs a lexicon.txt beside it (or pass a lexicon)", path=lm_path)
        return self._write_lexicon(arpa_unigrams(lm_path), "lexicon-from-arpa.txt")

    def _write_lexicon(self, words: Sequence[str], name: str) -> Path:
        letters = {s for s, k in zip(self.symbols, self.kinds) if k == "letter"}
        lines, _ = lexicon_lines(words, letters)
        if not lines:
            raise UserError("no lexicon word can be spelled with the model's vocabulary (wrong language?)")
        path = Path(self._tempdir.name) / name
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    def _checked_lexicon(self, path: Path) -> Path:
        """Keep only entries whose spelling the model can emit (flashlight would abort on an unknown token).

        A line is ``word t o k e n s``; the spelling is kept as given (lower-cased, like the token names), so a word
        may be spelled in other letters than its own (``über u b e r``: the zero-shot lexicon of
        :mod:`asr_transfer.zeroshot`). A line with only a word is spelled by its own letters.
        """
        letters = {s for s, k in zip(self.symbols, self.kinds) if k == "letter"}
        lines = set()
        with open(path, encoding="utf-8") as f:
            for line in f:
                parts = line.lower().split()
                if not parts:
                    continue
                spelling = [t for t in parts[1:] if t != WORD_DELIMITER] or list(parts[0])
                if all(t in letters for t in spelling):
                    lines.add(f"{parts[0]} {' '.join(spelling)}")
        if not lines:
            raise UserError("no lexicon word can be spelled with the model's vocabulary (wrong language?)", path=path)
        out = Path(self._tempdir.name) / "lexicon.txt"
        out.write_text("\n".join(sorted(lines)) + "\n", encoding="utf-8")
        return out

    def _emissions(self, x: np.ndarray) -> np.ndarray:
        x = x.copy()
        for keep, drop in self._merge:
            x[:, keep] = np.logaddexp(x[:, keep], x[:, drop])
            x[:, drop] = -np.inf
        for i, kind in enumerate(self.kinds):
            if kind == "special":
                x[:, i] = -np.inf
        return np.ascontiguousarray(x, dtype=np.float32)

    def decode(self, log_probs, frame_offset_s: float = 0.0) -> Hypothesis:
        """``log_probs``: ``(frames, vocab)`` log-softmax; returns the best beam :class:`Hypothesis`."""
        x = _checked_log_probs(log_probs, len(self.vocab))
        if x.shape[0] == 0:
            return Hypothesis("", (), 0.0)
        em = self._emissions(x)
        results = self._decoder.decoder.decode(em.ctypes.data, em.shape[0], em.shape[1])
        if not results:
            return Hypothesis("", (), float("-inf"))
        best = results[0]
        # Flashlight pads the path with one token before the first and after the last frame.
        path = np.asarray(best.tokens, dtype=np.int64)[1 : 1 + em.shape[0]]
        word_ids = np.asarray(best.words, dtype=np.int64)[1 : 1 + em.shape[0]] if self._word_labels else None
        frame_probs = np.exp(x[np.arange(len(path)), path])
        words, tokens = _words_from_path(path, frame_probs, self.symbols, self.kinds, self.blank_id,
                                         frame_offset_s, word_ids, self._word_labels)
        return Hypothesis(" ".join(w.word for w in words), words, float(best.score), tokens)

    def decode_batch(self, batch: Sequence, frame_offsets_s: Sequence[float] | None = None) -> list[Hypothesis]:
        offsets = frame_offsets_s or [0.0] * len(batch)
        return [self.decode(x, o) for x, o in zip(batch, offsets)]


DECODERS = ("greedy", "beam")


def check_decoder(kind: str, lm_dir: str | Path | None) -> None:
    """The one home of the rule "greedy or beam; an LM needs beam", for every command and the library."""
    if kind not in DECODERS:
        raise UserError(f"unknown decoder {kind!r}: use greedy or beam")
    if kind == "greedy" and lm_dir is not None:
        raise UserError("a language model needs the beam decoder: add --decoder beam (or drop --lm)")


def make_decoder(kind: str, vocab: Sequence[str], blank_id: int = 0, lm_dir: str | Path | None = None, **opts):
    """``kind`` "greedy" or "beam"; ``opts`` go to :class:`BeamDecoder` (greedy accepts none but ``delimiter``)."""
    check_decoder(kind, lm_dir)
    if kind == "greedy":
        return GreedyDecoder(vocab, blank_id=blank_id, delimiter=opts.get("delimiter", WORD_DELIMITER))
    return BeamDecoder(vocab, lm_dir=lm_dir, blank_id=blank_id, **opts)


def load_lm_record(lm_dir: str | Path) -> dict:
    """The ``lm.json`` record beside an LM (language, normaliser, counts), or {} when absent."""
    path = Path(lm_dir) / "lm.json"
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except PARSE_ERRORS as exc:
        raise UserError(f"not valid JSON ({str(exc)[:120]}); rebuild the LM with asr-transfer lm", path=path) from None
    if not isinstance(record, dict):
        raise UserError("must hold a JSON object; rebuild the LM with asr-transfer lm", path=path)
    return record
