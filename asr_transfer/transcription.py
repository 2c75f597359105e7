"""Audio files → :class:`Transcript` objects (text, word timings, timings), with chunked inference for long audio.

Short files (up to ``chunk_s``) are read whole and batched together across files. Longer files are streamed
(:func:`asr_transfer.audio.stream_audio`) and cut into overlapping windows, in the spirit of Hugging Face's
``chunk_length_s`` / ``stride_length_s``::

    window k:   |<- stride ->|<------- hop = chunk - 2*stride ------->|<- stride ->|   (chunk_s samples in all)
    kept:                    [ frames with stride_s of context on both sides ]

Windows start on multiples of the CNN hop (320 samples), so a window's frame ``i`` *is* the file's frame
``start / 320 + i``: the kept centre regions tile the file's frames exactly, with no gap or overlap, and with a model
whose receptive field is local they reproduce unchunked inference (see tests). The first window keeps its left edge
and the last its right edge.

Every window is normalised with the whole file's mean and deviation, from a first streaming pass over the file
(cheap next to inference), so the model sees the input scaling of a single pass; a window's own statistics shift
with its mix of speech and silence.

Memory stays flat with file length: audio is read block-wise, at most ``batch_s`` seconds of windows are in flight,
and the kept log-probs are decoded in segments of about ``segment_s`` seconds, cut where the best path is at a word
boundary inside a pause (blank/delimiter frames after a delimiter). Cutting there leaves greedy output exactly as
decoding the whole file at once; beam search restarts its LM context at each cut (at a pause, so little is lost).
"""
from __future__ import annotations

import glob
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from .audio import SAMPLE_RATE, WaveStats, audio_info, load_audio, stream_audio, wave_stats
from .decode import DecodeOptions, Hypothesis, WordTiming
from .errors import UserError
from .inference import InferenceOptions, Recognizer, as_recognizer
from .model.record import head_folder  # torch-free: the ONNX engine transcribes without importing torch
from .onnx_engine import OnnxRecognizer

# What soundfile (libsndfile 1.2) reads; m4a/aac/wma are not among them and are refused with a clear error.
AUDIO_EXTENSIONS = frozenset({"wav", "wave", "flac", "ogg", "oga", "opus", "mp3", "aif", "aiff", "aifc", "au", "caf",
                              "w64", "rf64", "sph", "voc"})
SEGMENT_S = 60.0  # s of log-probs decoded at once for long files (bounds decoder memory)


@dataclass(frozen=True)
class Timings:
    """Wall-clock seconds per step for one file; ``rtf`` = (load + infer + decode) / audio duration."""

    load_s: float = 0.0
    infer_s: float = 0.0
    decode_s: float = 0.0
    rtf: float = 0.0


@dataclass(frozen=True)
class Transcript:
    """The result for one input file. ``error`` is set (and ``text`` empty) when the file could not be transcribed."""

    path: str
    text: str
    words: tuple[WordTiming, ...] = ()
    duration_s: float = 0.0  # s of audio
    timings: Timings = Timings()
    error: str | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["words"] = [asdict(w) for w in self.words]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Transcript":
        return cls(path=d["path"], text=d["text"], words=tuple(WordTiming(**w) for w in d.get("words", ())),
                   duration_s=float(d.get("duration_s", 0.0)), timings=Timings(**d.get("timings", {})),
                   error=d.get("error"))


# ---------------------------------------------------------------- inputs


def expand_inputs(paths: Iterable[str | Path], recursive: bool = False) -> list[tuple[Path, str | None]]:
    """Files, folders and globs → ``(path, error)`` in input order, without duplicates.

    A folder contributes its audio files (by extension; with ``recursive`` also those in subfolders). A glob or
    folder that matches nothing, or a missing file, comes back with an error message instead of being dropped.
    """
    out: list[tuple[Path, str | None]] = []
    seen: set[Path] = set()

    def add(p: Path, error: str | None = None):
        key = p.resolve() if error is None else p
        if key not in seen:
            seen.add(key)
            out.append((p, error))

    for raw in paths:
        text = str(raw)
        p = Path(text).expanduser()
        if p.is_dir():
            files = sorted(f for f in (p.rglob("*") if recursive else p.iterdir())
                           if f.is_file() and f.suffix.lower().lstrip(".") in AUDIO_EXTENSIONS)
            if not files:
                hint = "" if recursive else " (use --recursive for subfolders)"
                add(p, f"{p}: no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))}) in this folder{hint}")
            for f in files:
                add(f)
        elif not p.exists() and glob.has_magic(text):
            matches = sorted(glob.glob(str(p), recursive=recursive))
            files = [Path(m) for m in matches if Path(m).is_file()]
            if not files:
                add(p, f"{p}: no file matches this pattern")
            for f in files:
                add(f)
        else:
            add(p)  # a missing or unreadable file is reported when it is read, with the reader's reason
    return out


# ---------------------------------------------------------------- decoding in segments


def _build_decoder(decoder, recognizer: Recognizer, lm_dir, beam_size: int | None):
    if hasattr(decoder, "decode"):
        return decoder
    if isinstance(decoder, DecodeOptions):
        options = decoder
    else:
        options = DecodeOptions(kind=str(decoder), lm_dir=None if lm_dir is None else str(lm_dir),
                                **({} if beam_size is None else {"beam_size": int(beam_size)}))
    return options.build(recognizer.vocab, blank_id=recognizer.blank_id)


def find_cut(log_probs: np.ndarray, blank_id: int, delimiter_id: int | None, min_frame: int = 1) -> int | None:
    """A frame index where splitting ``(frames, vocab)`` log-probs leaves best-path decoding unchanged, or None.

    Safe frames are blank or delimiter on the best path while the last emitted token is a delimiter (or nothing
    yet): a word is complete there. Of the runs of safe frames starting at or after ``min_frame`` the longest (the
    longest pause; the latest among equals) wins and is cut in its middle.
    """
    path = log_probs.argmax(axis=1)
    n = len(path)
    nonblank = np.where(path != blank_id, np.arange(n), -1)
    last = np.maximum.accumulate(nonblank)  # last non-blank frame at or before t
    last_token = np.full(n, -1)
    prev = np.concatenate([[-1], last[:-1]])  # ... strictly before t
    last_token[prev >= 0] = path[prev[prev >= 0]]
    is_gap = (path == blank_id) | (path == delimiter_id if delimiter_id is not None else False)
    word_done = (last_token == -1) | ((last_token == delimiter_id) if delimiter_id is not None else False)
    safe = is_gap & word_done
    safe[: max(1, min_frame)] = False
    if not safe.any():
        return None
    edges = np.diff(np.concatenate([[0], safe.astype(np.int8), [0]]))
    starts, ends = np.where(edges == 1)[0], np.where(edges == -1)[0]
    lengths = ends - starts
    best = np.flatnonzero(lengths == lengths.max())[-1]
    return int((starts[best] + ends[best]) // 2)


class SegmentedDecoder:
    """Decodes a stream of ``(frames, vocab)`` log-prob blocks in segments of about ``segment_frames`` frames.

    Memory is O(``segment_frames``) whatever the stream length. Segments end at :func:`find_cut` points (in the
    second half of the buffer when possible); if a buffer of 4 segments holds no word boundary, it is cut at its
    most blank frame (a word may then be split; speech without a pause for minutes is not realistic).
    """

    def __init__(self, decoder, vocab: Sequence[str], blank_id: int, frame_stride_s: float, segment_frames: int,
                 delimiter: str = "|"):
        self.decoder = decoder
        self.blank_id = blank_id
        self.delimiter_id = vocab.index(delimiter) if delimiter in vocab else None
        self.frame_stride_s = frame_stride_s
        self.segment_frames = max(1, int(segment_frames))
        self._blocks: list[np.ndarray] = []
        self._buffered = 0
        self._offset = 0  # frames already decoded
        self.words: list[WordTiming] = []
        self.texts: list[str] = []
        self.decode_s = 0.0

    def push(self, log_probs: np.ndarray) -> None:
        if len(log_probs):
            self._blocks.append(log_probs)
            self._buffered += len(log_probs)
        if self._buffered >= self.segment_frames:
            self._flush(final=False)

    def finish(self) -> Hypothesis:
        self._flush(final=True)
        return Hypothesis(" ".join(self.texts), tuple(self.words), 0.0)

    def _flush(self, final: bool) -> None:
        if not self._blocks:
            return
        t0 = time.perf_counter()
        x = self._blocks[0] if len(self._blocks) == 1 else np.concatenate(self._blocks)
        if final:
            cut = len(x)
        else:
            cut = find_cut(x, self.blank_id, self.delimiter_id, min_frame=len(x) // 2)
            if cut is None:
                cut = find_cut(x, self.blank_id, self.delimiter_id)
            if cut is None:
                if len(x) < 4 * self.segment_frames:
                    self._blocks, self.decode_s = [x], self.decode_s + time.perf_counter() - t0
                    return
                cut = len(x) // 2 + int(np.argmax(x[len(x) // 2 :, self.blank_id]))
        hyp = self.decoder.decode(x[:cut], frame_offset_s=self._offset * self.frame_stride_s)
        self.words.extend(hyp.words)
        if hyp.text:
            self.texts.append(hyp.text)
        self._offset += cut
        rest = x[cut:]
        self._blocks, self._buffered = ([rest], len(rest)) if len(rest) else ([], 0)
        self.decode_s += time.perf_counter() - t0


# ---------------------------------------------------------------- chunked inference


@dataclass(frozen=True)
class ChunkPlan:
    """Window geometry in samples (all multiples of the CNN hop)."""

    chunk: int
    stride: int
    hop: int
    samples_per_frame: int


def chunk_plan(recognizer: Recognizer, chunk_s: float, stride_s: float) -> ChunkPlan:
    """Round ``chunk_s``/``stride_s`` to whole CNN hops and check that the kept centres tile the file."""
    p = recognizer.samples_per_frame
    if not chunk_s > 0 or stride_s < 0:
        raise UserError(f"need chunk_s > 0 and stride_s >= 0 (got {chunk_s}, {stride_s})")
    chunk = max(1, round(chunk_s * SAMPLE_RATE / p)) * p
    stride = max(1, round(stride_s * SAMPLE_RATE / p)) * p  # at least one hop: the last frame needs 80 more samples
    hop = chunk - 2 * stride
    if hop <= 0:
        raise UserError(f"chunk_s ({chunk_s}) must be more than twice stride_s ({stride_s})")
    if recognizer.frames_for(chunk) < (chunk - stride) // p:
        raise UserError(f"stride_s {stride_s} is shorter than the model's receptive field; increase it")
    return ChunkPlan(chunk, stride, hop, p)


def iter_windows(blocks: Iterable[np.ndarray], plan: ChunkPlan) -> Iterator[tuple[int, np.ndarray, bool]]:
    """``(start_sample, window, is_last)`` over a stream of audio blocks; windows are ``plan.chunk`` long but the last.

    A window is known not to be the last once more than ``plan.chunk`` samples are buffered, so the last window is
    longer than ``2 * stride`` and its kept part always has left context.
    """
    buffer = np.zeros(0, dtype=np.float32)
    start = 0
    for block in blocks:
        buffer = np.concatenate([buffer, block])
        while len(buffer) > plan.chunk:
            yield start, buffer[: plan.chunk].copy(), False
            buffer = buffer[plan.hop :]
            start += plan.hop
    if len(buffer):
        yield start, buffer, True


def keep_range(start: int, num_frames: int, is_last: bool, plan: ChunkPlan) -> tuple[int, int]:
    """Local frame range ``[lo, hi)`` of a window whose output is kept (the centre; edges at the file's ends)."""
    lo = 0 if start == 0 else plan.stride // plan.samples_per_frame
    hi = num_frames if is_last else (plan.chunk - plan.stride) // plan.samples_per_frame
    return lo, min(hi, num_frames)


def iter_chunked_log_probs(recognizer: Recognizer, blocks: Iterable[np.ndarray], chunk_s: float = 30.0,
                           stride_s: float = 5.0, stats: dict | None = None,
                           file_stats: WaveStats | None = None) -> Iterator[np.ndarray]:
    """Kept ``(frames, vocab)`` log-probs of consecutive windows; concatenated they are the file's frames in order.

    Windows are batched so that one forward pass holds about ``recognizer.options.batch_s`` seconds of audio.
    ``stats`` (optional) receives ``load_s``, ``infer_s`` and ``num_samples``. ``file_stats``: normalise every
    window with the whole file's mean and deviation (:func:`~asr_transfer.audio.wave_stats`) instead of its own,
    as a single pass over the file would; only for models with ``do_normalize``.
    """
    prenormalized = file_stats is not None and recognizer.do_normalize
    plan = chunk_plan(recognizer, chunk_s, stride_s)
    per_batch = max(1, int(recognizer.options.batch_s * SAMPLE_RATE // plan.chunk))
    stats = stats if stats is not None else {}
    stats.setdefault("load_s", 0.0)
    stats.setdefault("infer_s", 0.0)
    stats["num_samples"] = 0
    windows = iter_windows(blocks, plan)
    done = False
    while not done:
        batch = []
        t0 = time.perf_counter()
        for item in windows:
            batch.append(item)
            if len(batch) == per_batch:
                break
        else:
            done = True
        stats["load_s"] += time.perf_counter() - t0
        if not batch:
            break
        t0 = time.perf_counter()
        # The shorter last window runs on its own: zero padding would otherwise leak into its last frames
        # (group-norm statistics, positional conv) for models fed without an attention mask.
        if prenormalized:
            batch = [(start, file_stats.apply(w), last) for start, w, last in batch]
        full = [w for _, w, last in batch if not last]
        outputs = (recognizer.log_probs(full, prenormalized) if full else []) + \
            ([recognizer.log_probs([batch[-1][1]], prenormalized)[0]] if batch[-1][2] else [])
        stats["infer_s"] += time.perf_counter() - t0
        for (start, wave, is_last), lp in zip(batch, outputs):
            lo, hi = keep_range(start, len(lp), is_last, plan)
            if is_last:
                stats["num_samples"] = start + len(wave)
            yield lp[lo:hi]


# ---------------------------------------------------------------- files


def _report(on_error: Callable[[str, str], None] | None, path: Path, message: str) -> None:
    if str(path) not in message:
        message = f"{path}: {message}"
    if on_error is not None:
        on_error(str(path), message)
    else:
        from tqdm.auto import tqdm

        tqdm.write(f"error: {message} (skipped)", file=sys.stderr)  # does not break a progress bar


def iter_transcripts(paths, model, decoder="greedy", lm_dir=None, device: str = "auto", precision: str = "auto",
                     recursive: bool = False, chunk_s: float = 30.0, stride_s: float = 5.0, batch_s: float = 160.0,
                     on_error: Callable[[str, str], None] | None = None, *, beam_size: int | None = None,
                     allow_pickle: bool = False, segment_s: float = SEGMENT_S,
                     progress: bool = True, engine: str = "auto", lang: str | None = None) -> Iterator[Transcript]:
    """Like :func:`transcribe`, but yields each :class:`Transcript` (in input order) as soon as it is ready."""
    from tqdm.auto import tqdm

    if isinstance(paths, (str, Path)):
        paths = [paths]
    inputs = expand_inputs(paths, recursive)
    model = model_for_lang(model, lang)
    recognizer = as_recognizer(model, InferenceOptions(device=device, precision=precision, batch_s=batch_s,
                                                       engine=engine), allow_pickle=allow_pickle)
    dec = _build_decoder(decoder, recognizer, lm_dir, beam_size)
    chunk_plan(recognizer, chunk_s, stride_s)  # bad chunk settings fail before any file is read
    pending: list[tuple[Path, np.ndarray, float]] = []  # short files waiting for a shared forward pass
    pending_samples = 0
    max_pending = int(batch_s * SAMPLE_RATE)

    def flush() -> Iterator[Transcript]:
        nonlocal pending, pending_samples
        if not pending:
            return
        t_infer = time.perf_counter()
        outputs = recognizer.log_probs([w for _, w, _ in pending])
        infer_s = time.perf_counter() - t_infer
        total = sum(len(w) for _, w, _ in pending)
        for (path, wave, load_s), lp in zip(pending, outputs):
            t_dec = time.perf_counter()
            hyp = dec.decode(lp, frame_offset_s=0.0)
            duration_s = len(wave) / SAMPLE_RATE
            yield _finish(path, hyp, duration_s, load_s, infer_s * len(wave) / max(total, 1),
                          time.perf_counter() - t_dec)
        pending, pending_samples = [], 0

    bar = tqdm(inputs, unit="file", disable=None if progress else True, desc="transcribe")
    for path, error in bar:
        if error is not None:
            yield from flush()
            _report(on_error, path, error)
            yield Transcript(str(path), "", error=error)
            continue
        try:
            t_load = time.perf_counter()
            info = audio_info(path)
            if info.duration_s <= chunk_s:
                wave = load_audio(path)
                pending.append((path, wave, time.perf_counter() - t_load))
                pending_samples += len(wave)
                if pending_samples >= max_pending:
                    yield from flush()
                continue
            yield from flush()  # keep input order
            yield _transcribe_long(path, recognizer, dec, chunk_s, stride_s, segment_s,
                                   time.perf_counter() - t_load)
        except UserError as exc:
            yield from flush()
            _report(on_error, path, str(exc))
            yield Transcript(str(path), "", error=str(exc))
    yield from flush()
    bar.close()


def _transcribe_long(path: Path, recognizer: Recognizer, dec, chunk_s: float, stride_s: float, segment_s: float,
                     open_s: float) -> Transcript:
    stats = {"load_s": open_s, "infer_s": 0.0}
    segmented = SegmentedDecoder(dec, recognizer.vocab, recognizer.blank_id, recognizer.frame_stride_s,
                                 int(segment_s / recognizer.frame_stride_s))
    block_s = max(chunk_s, 10.0)
    file_stats = None
    if recognizer.do_normalize:  # a first streaming pass: the file's own statistics, as one pass would use
        t0 = time.perf_counter()
        file_stats = wave_stats(stream_audio(path, block_s=block_s))
        stats["load_s"] += time.perf_counter() - t0
    blocks = stream_audio(path, block_s=block_s)
    for kept in iter_chunked_log_probs(recognizer, blocks, chunk_s, stride_s, stats, file_stats):
        segmented.push(kept)
    hyp = segmented.finish()
    return _finish(path, hyp, stats["num_samples"] / SAMPLE_RATE, stats["load_s"], stats["infer_s"],
                   segmented.decode_s)


def _finish(path: Path, hyp: Hypothesis, duration_s: float, load_s: float, infer_s: float,
            decode_s: float) -> Transcript:
    # Word times come from frame indices and stay inside the audio by construction; clamp against rounding only.
    words = tuple(
        WordTiming(w.word, min(max(0.0, w.start_s), duration_s), min(max(0.0, w.end_s), duration_s), w.confidence)
        for w in hyp.words
    )
    total = load_s + infer_s + decode_s
    timings = Timings(round(load_s, 6), round(infer_s, 6), round(decode_s, 6),
                      round(total / duration_s, 6) if duration_s > 0 else 0.0)
    return Transcript(str(path), hyp.text, words, duration_s, timings, None)


def model_for_lang(model, lang: str | None):
    """``model``, or the folder of its head for ``lang`` (:func:`asr_transfer.model.record.head_folder`).

    A loaded model or recognizer (either engine) of another language is looked up by its folder (``.path``).
    """
    if lang is None:
        return model
    if isinstance(model, (str, Path)):
        return head_folder(model, lang)
    loaded = model.loaded if isinstance(model, (Recognizer, OnnxRecognizer)) else model
    if getattr(loaded, "lang", None) == lang:
        return model
    path = getattr(loaded, "path", None)
    if path is None or not Path(path).is_dir():
        raise UserError(f"lang {lang!r}: the model is {getattr(loaded, 'lang', '?')}; pass its folder to pick a head")
    return head_folder(path, lang)


def transcribe(paths, model, decoder="greedy", lm_dir=None, device: str = "auto", precision: str = "auto",
               recursive: bool = False, chunk_s: float = 30.0, stride_s: float = 5.0, batch_s: float = 160.0,
               on_error: Callable[[str, str], None] | None = None, **kwargs) -> list[Transcript]:
    """Transcribe audio files; returns one :class:`Transcript` per input file, in input order.

    ``paths``: files, folders (audio files inside; ``recursive`` for subfolders) and globs. ``model``: a model
    folder / id, a :class:`~asr_transfer.model.load.LoadedModel` or a :class:`~asr_transfer.inference.Recognizer`
    (whose own device/precision then apply). ``decoder``: ``"greedy"``, ``"beam"`` (with ``lm_dir`` for an n-gram
    LM), a :class:`~asr_transfer.decode.DecodeOptions` or a built decoder. Files longer than ``chunk_s`` seconds are
    streamed in windows of ``chunk_s`` with ``stride_s`` of context on each side. Unreadable files are reported
    through ``on_error(path, message)`` (default: one line on stderr) and come back with ``error`` set.
    ``engine``: ``"auto"`` (default) runs a model folder's ONNX export on ONNX Runtime when it has a fresh one
    (:func:`asr_transfer.onnx_export.export_onnx`), torch otherwise; ``"torch"`` or ``"onnx"`` force one.
    Keyword-only extras: ``beam_size``, ``allow_pickle``, ``segment_s``, ``progress``, ``engine`` and ``lang``: the
    head of a model trained with two heads (``train.mix.head = own``, e.g. ``"en"``; its ``heads/en/`` folder);
    default the model's own language.
    """
    return list(iter_transcripts(paths, model, decoder, lm_dir, device, precision, recursive, chunk_s, stride_s,
                                 batch_s, on_error, **kwargs))
