"""Inference with ONNX Runtime: an exported model folder in, per-frame log-probabilities out, without torch.

:func:`asr_transfer.model.onnx_export.export_onnx` writes the folder: ``model.onnx`` (fp32), ``model.int8.onnx``
(dynamic int8 quantisation of the matrix products) and ``onnx.json`` (everything inference needs: vocabulary, blank,
input normalisation, the CNN's length formula, and the weights it was exported from). :class:`OnnxRecognizer` has the
interface of :class:`asr_transfer.inference.Recognizer` that transcription uses, so the transcription pipeline
(chunking, decoders, word timings, writers) is the same for both engines.

Each clip runs alone and unpadded (batch 1), which is what ``transformers.pipeline`` does and what the torch engine's
exact path computes: no padding ever reaches the CNN's time-wise GroupNorm or the attention, so no mask is needed and
a transcript never depends on what else is in the folder. ONNX Runtime builds no kernel per input shape, so unlike
the torch engine it gains nothing from padding lengths to a common quantum.

Nothing here imports torch: a process that transcribes with this engine starts in a fraction of the time
(``docs/speed.md``).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .audio import SAMPLE_RATE, FrameGeometry, normalize_wave
from .errors import ModelError, UserError
from .model.record import RECORD_FILE, ModelRecord

ONNX_META_FILE = "onnx.json"
ONNX_SUBDIR = "onnx"  # export-onnx's default place inside a model folder
ONNX_FORMAT = 1  # version of onnx.json's layout
ONNX_PRECISIONS = ("fp32", "int8")  # what an export holds; bf16 has no fast ONNX Runtime CPU kernels
ENGINES = ("auto", "torch", "onnx")


@dataclass
class OnnxModel:
    """What :class:`OnnxRecognizer` exposes as ``loaded`` (the fields evaluation and reports read from a model)."""

    path: str
    vocab: list[str]  # id -> token
    blank_id: int
    lang: str
    normalizer_name: str
    record: Any  # the source model's ModelRecord (the export's asr_transfer.json), or None
    meta: dict
    model: None = None  # no torch module: what needs one (a head swap, training) takes the torch engine


def read_meta(folder: str | os.PathLike) -> dict:
    """``onnx.json`` of an export folder; a missing or unreadable one is a :class:`ModelError` naming it."""
    path = Path(folder) / ONNX_META_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"no {ONNX_META_FILE}: not an ONNX export (make one with `asr-transfer export-onnx`)",
                         path=Path(folder))
    except (OSError, ValueError) as exc:
        raise ModelError(f"unreadable ({exc})", path=path)
    if not isinstance(meta, dict) or meta.get("format") != ONNX_FORMAT:
        raise ModelError(f"format {meta.get('format') if isinstance(meta, dict) else None!r} is not {ONNX_FORMAT}; "
                         "re-export with this version's `asr-transfer export-onnx`", path=path)
    return meta


def weights_fingerprint(model_dir: str | os.PathLike) -> dict | None:
    """Size and modification time of a model folder's weights (``model.safetensors``), or None without one.

    An export records this of the folder it came from, so that a model retrained in place is not transcribed by its
    stale export: comparing two stat() results costs nothing at start-up, unlike hashing 360 MB of weights.
    """
    path = Path(model_dir) / "model.safetensors"
    try:
        st = path.stat()
    except OSError:
        return None
    return {"file": path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def gpu_present() -> bool:
    """Whether the machine has an NVIDIA or AMD GPU driver loaded, asked without importing torch."""
    nvidia = Path("/proc/driver/nvidia/gpus")
    return (nvidia.is_dir() and any(nvidia.iterdir())) or Path("/dev/kfd").exists()


def find_export(model: str | os.PathLike, engine: str, precision: str = "auto", device: str = "auto") -> Path | None:
    """The ONNX export folder to run for ``model`` with ``engine``, or None for the torch engine.

    ``model`` may be an export folder itself, or a model folder with a fresh export in ``onnx/``. ``auto`` takes an
    export when there is one and it can serve the request: a CPU run (``device`` cpu, or auto on a machine without a
    GPU) at a precision the export holds (not bf16); otherwise, and when the export is stale (skipped with a
    warning), the torch engine. ``onnx`` without a usable export is a :class:`UserError` saying how to make one.
    """
    if engine not in ENGINES:
        raise UserError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
    if engine == "torch":
        return None
    if engine == "auto" and (precision == "bf16" or device.startswith("cuda") or (device == "auto" and gpu_present())):
        return None
    folder = Path(model).expanduser()
    if (folder / ONNX_META_FILE).is_file():
        return folder
    sub = folder / ONNX_SUBDIR
    if (sub / ONNX_META_FILE).is_file():
        recorded = read_meta(sub).get("source_weights")
        current = weights_fingerprint(folder)
        if recorded is None or current is None or recorded == current:
            return sub
        message = (f"{sub}: exported from other weights than {folder}/model.safetensors now holds (retrained since?); "
                   f"re-run `asr-transfer export-onnx --model {folder}`")
        if engine == "onnx":
            raise UserError(message)
        import warnings

        warnings.warn(message + "; using the torch engine", RuntimeWarning, stacklevel=2)
        return None
    if engine == "onnx":
        raise UserError(f"{folder}: no ONNX export here or in {ONNX_SUBDIR}/; make one with "
                        f"`asr-transfer export-onnx --model {folder}`")
    return None


def onnx_precision(precision: str, meta: dict) -> str:
    """The export file's precision for a requested one; bf16 is not offered by this engine.

    ``auto`` is int8 when the export has it, else fp32: on the shipped model int8 moved WER by 0.10 points
    (synthetic English test) and 0.24 (realspeech en), inside the 0.5 that ``--precision auto`` allows the torch
    engine's bf16 (``docs/speed.md``).
    """
    if precision == "auto":
        return "int8" if "int8" in meta.get("files", {}) else "fp32"
    if precision not in ONNX_PRECISIONS:
        raise UserError(f"precision {precision!r} is not available with the ONNX engine; use "
                        f"{' or '.join(ONNX_PRECISIONS)} (or --engine torch for bf16)")
    if precision not in meta.get("files", {}):
        raise UserError(f"this ONNX export has no {precision} model (exported with --no-int8?); "
                        f"it has {', '.join(meta.get('files', {}))}")
    return precision


class OnnxRecognizer(FrameGeometry):
    """An exported model ready for inference with ONNX Runtime on the CPU (see the module docstring).

    ``options``: an :class:`asr_transfer.inference.InferenceOptions`; its ``batch_s`` does not apply (one clip per
    run) and ``num_threads`` sets ONNX Runtime's intra-op threads (None: one per physical core).
    """

    def __init__(self, folder: str | os.PathLike, options):
        import onnxruntime as ort

        folder = Path(folder)
        meta = read_meta(folder)
        if options.device not in ("auto", "cpu"):
            raise UserError(f"the ONNX engine runs on the CPU (asked for {options.device!r}); use --engine torch "
                            "for a GPU")
        self.options = options
        self.precision = onnx_precision(options.precision, meta)
        if self.precision == "int8" and "int8_cnn" not in meta:
            import warnings

            # Exports before the framewise int8 CNN run it in fp32: at base size 1.9x the pipeline instead of 2.6x.
            warnings.warn(f"{folder}: this export's int8 model keeps the CNN in fp32 (made by an older asr-transfer); "
                          f"re-run `asr-transfer export-onnx --model {meta.get('source') or 'MODEL'}` for a faster one",
                          RuntimeWarning, stacklevel=2)
        self.device = "cpu"
        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if options.num_threads is not None:
            session_options.intra_op_num_threads = int(options.num_threads)
        path = folder / meta["files"][self.precision]
        self.onnx_file = path
        try:
            self.session = ort.InferenceSession(str(path), session_options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own unrelated exception types
            raise ModelError(f"ONNX Runtime cannot load it ({str(exc).splitlines()[0]})", path=path)
        self.input_name = self.session.get_inputs()[0].name
        self.conv_kernel = tuple(meta["conv_kernel"])
        self.conv_stride = tuple(meta["conv_stride"])
        self.sample_rate = int(meta.get("sample_rate", SAMPLE_RATE))
        self.do_normalize = bool(meta["do_normalize"])
        self.vocab: list[str] = list(meta["vocab"])
        self.blank_id: int = int(meta["blank_id"])
        self.lang = meta.get("lang")
        record = ModelRecord.read(folder / RECORD_FILE) if (folder / RECORD_FILE).is_file() else None
        self.loaded = OnnxModel(str(folder), self.vocab, self.blank_id, meta.get("lang") or "",
                                meta.get("normalizer") or "", record, meta)

    def log_probs(self, waves: Sequence[np.ndarray], normalized: bool = False) -> list[np.ndarray]:
        """Per-frame log-softmax for each mono 16 kHz ``(samples,)`` wave: ``(frames, vocab)`` float32 arrays.

        Same contract as :meth:`asr_transfer.inference.Recognizer.log_probs`: ``frames == self.frames_for(len)``,
        ``(0, vocab)`` below the receptive field; ``normalized`` means the caller already normalised the input.
        """
        out = []
        for i, wave in enumerate(waves):
            wave = np.asarray(wave, dtype=np.float32)
            if wave.ndim != 1:
                raise UserError(f"wave {i} has shape {wave.shape}; expected mono (samples,) audio")
            frames = self.frames_for(len(wave))
            if frames == 0:
                out.append(np.zeros((0, len(self.vocab)), dtype=np.float32))
                continue
            x = normalize_wave(wave) if self.do_normalize and not normalized else wave
            (lp,) = self.session.run(None, {self.input_name: np.ascontiguousarray(x[None], dtype=np.float32)})
            if lp.shape[1] != frames:  # the graph and the length formula disagree: a broken export
                raise ModelError(f"the ONNX model gave {lp.shape[1]} frames for {len(wave)} samples, expected "
                                 f"{frames}", path=Path(self.loaded.path))
            out.append(np.ascontiguousarray(lp[0], dtype=np.float32))
        return out

    def __repr__(self) -> str:
        return f"OnnxRecognizer(precision={self.precision}, vocab={len(self.vocab)})"
