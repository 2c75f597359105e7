"""Batched CTC inference: mono 16 kHz waves in, per-frame log-probabilities out.

:class:`Recognizer` is the one place that runs a ``Wav2Vec2ForCTC`` forward pass for evaluation and transcription.
It prepares input the way the model's feature extractor does, batches by padded audio seconds, and trims every
output to that utterance's real frame count.

Padding and attention masks. Two kinds of wav2vec2 checkpoints exist:

* ``feat_extract_norm="layer"`` models (large-lv60, XLS-R, ...) were trained with an ``attention_mask``; their feature
  extractor says ``return_attention_mask=True`` and we pass the mask.
* ``feat_extract_norm="group"`` models (``facebook/wav2vec2-base-960h`` and the project's small models) were trained
  *without* a mask; their first conv layer's GroupNorm normalises over time, and feeding a mask gives worse output
  than feeding zero-padded audio. For them (``return_attention_mask=False``) we pass no mask and pad with zeros, as
  Hugging Face documents. Fed that way, the padded tail would slightly change shorter utterances in a batch, so
  batches of such models run their CNN with the norm over each utterance's real frames and their transformer with a
  mask over the padding (:meth:`Recognizer._exact_group_norm_batch`): every row equals that clip run alone.

Normalisation follows ``do_normalize``: zero mean, unit variance per utterance, computed over its real samples only
(before padding), exactly like ``Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm``.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .audio import SAMPLE_RATE, FrameGeometry, normalize_wave
from .errors import UserError
from .onnx_engine import ENGINES, OnnxRecognizer, find_export
from .precision import PRECISIONS, check_precision

# torch and the model modules are imported where they are used: transcription with the ONNX engine never needs them,
# and importing torch and transformers is 4-5 s of a short transcription's start-up (docs/speed.md).


@dataclass(frozen=True)
class InferenceOptions:
    """How to run the model; nothing here changes the result beyond numerical precision.

    ``batch_s`` bounds one forward pass by *padded* audio seconds (``batch_size * longest_s``), which bounds memory.
    """

    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    precision: str = "fp32"  # "auto" | "fp32" | "bf16" (weights and activations) | "int8" (dynamic, CPU only)
    batch_s: float = 160.0  # s of padded audio per forward pass
    num_threads: int | None = None  # intra-op threads on CPU; None leaves the engine's default
    engine: str = "torch"  # "torch" | "onnx" (an export made by export_onnx) | "auto" (the export when there is one)

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise UserError(f"unknown engine {self.engine!r}; use one of {', '.join(ENGINES)}")
        if self.precision not in PRECISIONS:
            raise UserError(f"unknown precision {self.precision!r}; use one of {', '.join(PRECISIONS)}")
        if not self.batch_s > 0:
            raise UserError(f"batch_s must be > 0 seconds (got {self.batch_s})")
        if self.num_threads is not None and self.num_threads < 1:
            raise UserError(f"num_threads must be >= 1 (got {self.num_threads})")


def plan_batches(lengths: Sequence[int], max_samples: int, min_fill: float = 0.8) -> list[list[int]]:
    """Group indices so that ``len(group) * max(lengths in group) <= max_samples`` (one item always fits alone).

    Indices are visited longest first, and a new group also starts when an item is shorter than ``min_fill`` × the
    group's longest, so no item is more than ``1 - min_fill`` padding. Without that bound a large ``max_samples``
    (160 s) packs 3-s clips with 8-s ones: on 60 synthetic clips, 55 % of the batch was padding and inference on CPU
    ran 1.7-2x slower than with small batches (bench/transcribe_speed.py).
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = lengths[current[0]] if current else lengths[i]
        if current and ((len(current) + 1) * longest > max_samples or lengths[i] < min_fill * longest):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


class Recognizer(FrameGeometry):
    """A loaded CTC model ready for batched inference on one device.

    ``loaded`` is a :class:`asr_transfer.model.load.LoadedModel` (or anything with ``.model``, ``.processor``,
    ``.vocab``, ``.blank_id``). The model is moved to the device and put in eval mode; int8 quantises a copy.
    """

    def __init__(self, loaded, options: InferenceOptions = InferenceOptions()):
        import torch

        from .model.load import resolve_device

        self.loaded = loaded
        self.options = options
        self.device = resolve_device(options.device)
        self.precision = check_precision(options.precision, self.device.type)
        if options.num_threads is not None:
            torch.set_num_threads(options.num_threads)
        model = loaded.model.to(self.device).eval()
        if self.precision == "int8":
            with warnings.catch_warnings():  # torch.ao is deprecated in favour of torchao, which we do not ship
                warnings.simplefilter("ignore", DeprecationWarning)
                model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        elif self.precision == "bf16":
            # A bf16 copy of the weights rather than autocast, which cast every weight on every call: on a
            # base-960h-size model those casts were 15 % of a bf16 forward (torch.profiler, one thread).
            model = copy.deepcopy(model).to(torch.bfloat16)
        self.dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        self.model = model
        config = loaded.model.config
        self.conv_kernel = tuple(config.conv_kernel)
        self.conv_stride = tuple(config.conv_stride)
        extractor = getattr(loaded.processor, "feature_extractor", loaded.processor)
        self.sample_rate = int(getattr(extractor, "sampling_rate", SAMPLE_RATE))
        if self.sample_rate != SAMPLE_RATE:
            raise UserError(f"model expects {self.sample_rate} Hz audio; only {SAMPLE_RATE} Hz models are supported")
        self.do_normalize = bool(getattr(extractor, "do_normalize", True))
        self.use_attention_mask = bool(getattr(extractor, "return_attention_mask", False))
        self.padding_value = float(getattr(extractor, "padding_value", 0.0))
        self.group_norm = getattr(config, "feat_extract_norm", "group") == "group"
        self.vocab: list[str] = list(loaded.vocab)
        self.blank_id: int = int(loaded.blank_id)
        self.lang = getattr(loaded, "lang", None)

    def log_probs(self, waves: Sequence[np.ndarray], normalized: bool = False) -> list[np.ndarray]:
        """Per-frame log-softmax for each mono 16 kHz ``(samples,)`` wave, in input order.

        Returns ``(frames, vocab)`` float32 arrays with ``frames == self.frames_for(len(wave))``; waves shorter than
        the receptive field (400 samples) give ``(0, vocab)``. ``normalized``: the caller has already applied the
        model's input normalisation (chunked inference uses the whole file's statistics), so it is not redone here.
        """
        import torch

        waves = [np.asarray(w) for w in waves]
        for i, w in enumerate(waves):
            if w.ndim != 1:
                raise UserError(f"wave {i} has shape {w.shape}; expected mono (samples,) audio")
        lengths = [len(w) for w in waves]
        out: list[np.ndarray | None] = [None] * len(waves)
        vocab_size = len(self.vocab)
        runnable = [i for i, n in enumerate(lengths) if self.frames_for(n) > 0]
        for i in set(range(len(waves))) - set(runnable):
            out[i] = np.zeros((0, vocab_size), dtype=np.float32)
        max_samples = max(1, int(self.options.batch_s * self.sample_rate))
        batches = plan_batches([lengths[i] for i in runnable], max_samples)
        with torch.inference_mode():
            for batch in batches:
                idx = [runnable[j] for j in batch]
                for i, lp in zip(idx, self._forward([waves[i] for i in idx], normalized)):
                    out[i] = lp
        return out  # type: ignore[return-value]

    def _forward(self, waves: list[np.ndarray], normalized: bool = False) -> list[np.ndarray]:
        """One padded forward pass; ``waves`` are already sorted longest first."""
        import torch

        # Padded to the longest clip only. Rounding up to 0.5 s (fewer distinct shapes, so fewer oneDNN kernel builds
        # in a fresh process) made whole transcription processes slower, not faster, once the first layer's norm was
        # torch's own kernel: 93 clips at base size 31.3 s against 30.4 s (fp32), 20.3 s against 19.0 s (bf16).
        longest = max(len(w) for w in waves)
        batch = np.full((len(waves), longest), self.padding_value, dtype=np.float32)
        mask = np.zeros((len(waves), longest), dtype=np.int64)
        for row, w in enumerate(waves):
            batch[row, : len(w)] = normalize_wave(w) if self.do_normalize and not normalized else w
            mask[row, : len(w)] = 1
        inputs = {"input_values": torch.from_numpy(batch).to(self.device, self.dtype)}
        if self.use_attention_mask:
            inputs["attention_mask"] = torch.from_numpy(mask).to(self.device)
        if not self.use_attention_mask and self.group_norm:  # padded even when alone: norms over real frames
            logits = self._exact_group_norm_batch(inputs["input_values"], [len(w) for w in waves])
        else:
            logits = self.model(**inputs).logits  # (batch, frames, vocab)
        log_probs = torch.log_softmax(logits.float(), dim=-1).cpu().numpy()
        return [np.ascontiguousarray(log_probs[row, : self.frames_for(len(w))]) for row, w in enumerate(waves)]

    def _exact_group_norm_batch(self, input_values, lengths: list[int]):
        """Logits of a padded batch of a GroupNorm-CNN model, each row equal to that utterance run alone.

        Fed zero-padded audio as a whole (Hugging Face's way for these models), the CNN's time-wise GroupNorm and
        the unmasked attention both see the padding, so a clip's transcript could change with what it was batched
        with. Here the CNN runs via :func:`asr_transfer.model.forward.group_norm_cnn` (norm over real frames only) and
        the
        transformer with a mask over the padded frames: batching changes nothing beyond float rounding.
        """
        import torch

        from .model.forward import group_norm_cnn, num_segments, run_segments, unwrap

        base = unwrap(self.model)
        h, frames = group_norm_cnn(base, input_values, torch.tensor(lengths, device=input_values.device))
        return run_segments(base, h, 1, num_segments(base), frames)

    def __repr__(self) -> str:
        return f"Recognizer(device={self.device}, precision={self.precision}, vocab={len(self.vocab)})"


def as_recognizer(model, options: InferenceOptions, allow_pickle: bool = False) -> Recognizer | OnnxRecognizer:
    """A recognizer from a path/id, a loaded model, or an existing recognizer (returned as is).

    A path runs on ONNX Runtime (:class:`~asr_transfer.onnx_engine.OnnxRecognizer`) when ``options.engine`` is
    ``onnx``, or ``auto`` and the folder is, or holds, a fresh ONNX export that can serve the device and precision
    (:func:`~asr_transfer.onnx_engine.find_export`); on torch otherwise.
    """
    if isinstance(model, (Recognizer, OnnxRecognizer)):
        return model
    if isinstance(model, (str, Path)):
        export = find_export(model, options.engine, options.precision, options.device)
        if export is not None:
            return OnnxRecognizer(export, options)
        from .model.load import load_model, resolve_device

        device = str(resolve_device(options.device))
        model = load_model(model, device=device, allow_pickle=allow_pickle)
    if options.engine == "onnx":
        raise UserError("the ONNX engine takes a folder made by `asr-transfer export-onnx`, not a loaded model")
    if not hasattr(model, "model") or not hasattr(model, "processor"):
        raise UserError(f"model must be a path, a model id or a loaded model, not {type(model).__name__}")
    return Recognizer(model, options)
