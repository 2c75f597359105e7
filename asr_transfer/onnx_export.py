"""Export a CTC model to ONNX for :mod:`asr_transfer.onnx_engine`: fp32 and dynamic int8, checked against torch.

The exported graph is the model's own forward pass plus a log-softmax: ``input_values`` ``(batch, samples)``
normalised 16-kHz audio → ``log_probs`` ``(batch, frames, vocab)``, with both lengths dynamic. It is traced with
torch's ``torch.export``-based exporter (``dynamo=True``; the TorchScript exporter is deprecated in torch 2.9+).
The engine feeds one unpadded clip per run, so the graph needs no attention mask for either kind of wav2vec2.

int8 is ONNX Runtime's dynamic quantisation of the matrix products (``MatMul``): weights int8 per output channel,
activations quantised per call. Per channel, because per tensor moved the shipped model's WER on its synthetic
English test by 0.77 points (45.35 → 44.58 %), per channel by 0.10. ONNX Runtime's int8 convolution
(``ConvInteger``) is slow (a base-size model ran 2.2× slower with it), so the int8 file is exported from a second
graph in which the CNN's convolutions after the first are matrix products over frames (:class:`_FramewiseCNN`); the
fp32 file keeps the model's own convolutions.
"""
from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .audio import SAMPLE_RATE
from .errors import ModelError, UserError
from .files import atomic_folder_write
from .inference import InferenceOptions, Recognizer
from .model.forward import unwrap
from .model.record import RECORD_FILE
from .onnx_engine import ONNX_FORMAT, ONNX_META_FILE, ONNX_SUBDIR, OnnxRecognizer, weights_fingerprint

OPSET = 20  # the first with a Gelu operator, which ONNX Runtime runs as one kernel instead of an Erf pattern
CHECK_SECONDS = 3.3  # s of test signal for the export's self-check
FP32_TOLERANCE = 1e-3  # max |Δ log-prob| between ONNX Runtime fp32 and torch fp32 on the check signal
MAX_INLINE_BYTES = 1_800_000_000  # protobuf's 2 GB limit on one .onnx file, with room for the graph
ROW_SCALE_FLOOR = 1e-6  # smallest per-frame scale in _FramewiseCNN: a silent (all-zero) row stays zero, not NaN


class _FramewiseCNN(nn.Module):
    """A wav2vec2 CNN feature encoder whose convolutions after the first are matrix products over frames.

    Same input and output as the encoder (``(batch, samples)`` → ``(batch, channels, frames)``) and the same numbers
    up to float rounding. Layer ``i`` (kernel ``k``, stride ``s``) gathers each output frame's ``k`` input frames into
    one row, ``(batch, frames, k · channels)``, and multiplies it by the kernel as a ``(k · channels, channels)``
    matrix, so that dynamic quantisation makes those layers int8 GEMMs: at base size they are a third of the model's
    multiply-adds. The first layer (one input channel, and the group norm over time) runs as it is.

    Each row is divided by its largest magnitude before the product and multiplied back after it (exact in real
    arithmetic: ``(x / a) W · a = x W``), because the quantiser takes one scale per call: one per clip, where the
    CNN's activations follow the loudness of each frame. With one scale per clip the shipped model's realspeech WER
    moved 0.59 points from fp32; with one per frame 0.00 (``docs/speed.md``).
    """

    def __init__(self, encoder: nn.Module):
        super().__init__()
        layers = list(encoder.conv_layers)
        self.first = layers[0]
        self.kernels: list[tuple[int, int]] = []
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.norms = nn.ModuleList()
        self.activations = nn.ModuleList()
        for layer in layers[1:]:
            conv = layer.conv
            # (out, in, k) → (out, k · in), tap-major like the gathered rows
            weight = conv.weight.detach().permute(0, 2, 1).reshape(conv.out_channels, -1)
            self.weights.append(nn.Parameter(weight, requires_grad=False))
            self.biases.append(nn.Parameter(conv.bias.detach() if conv.bias is not None
                                            else torch.zeros(conv.out_channels), requires_grad=False))
            self.kernels.append((conv.kernel_size[0], conv.stride[0]))
            self.norms.append(getattr(layer, "layer_norm", None) or nn.Identity())
            self.activations.append(layer.activation)

    @staticmethod
    def supports(encoder: nn.Module) -> bool:
        """Whether ``encoder`` is a stack of plain convolutions, each after the first with no norm or a channel
        LayerNorm (every wav2vec2 CNN transformers builds; a group norm after the first layer would need time)."""
        layers = getattr(encoder, "conv_layers", None)
        if not layers or len(layers) < 2:
            return False
        for layer in list(layers)[1:]:
            conv = getattr(layer, "conv", None)
            norm = getattr(layer, "layer_norm", None)
            if not isinstance(conv, nn.Conv1d) or conv.groups != 1 or conv.padding != (0,) or conv.dilation != (1,):
                return False
            if norm is not None and not isinstance(norm, nn.LayerNorm):
                return False
        return True

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        hidden = self.first(input_values[:, None]).transpose(1, 2)  # (batch, frames, channels)
        for (kernel, stride), weight, bias, norm, activation in zip(self.kernels, self.weights, self.biases,
                                                                     self.norms, self.activations):
            rows = hidden.unfold(1, kernel, stride).transpose(2, 3).flatten(2)  # (batch, frames', k · channels)
            scale = rows.abs().amax(-1, keepdim=True).clamp_min(ROW_SCALE_FLOOR)
            hidden = activation(norm(nn.functional.linear(rows / scale, weight) * scale + bias))
        return hidden.transpose(1, 2)


class _LogProbs(nn.Module):
    """The model's forward pass with its log-softmax, so that the engine gets log-probabilities directly."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.model(input_values=input_values).logits.float(), dim=-1)


def check_signal(seconds: float = CHECK_SECONDS, seed: int = 0) -> np.ndarray:
    """A deterministic ``(samples,)`` test input: a 150-400 Hz chirp with noise, long enough for every CNN layer."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    rng = np.random.default_rng(seed)
    chirp = np.sin(2 * np.pi * (150 * t + 250 / (2 * seconds) * t**2))
    return (0.3 * chirp + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)


def export_onnx(model, out_dir: str | os.PathLike | None = None, int8: bool = True,
                allow_pickle: bool = False) -> Path:
    """Export ``model`` (a folder / id or a loaded model) to ``out_dir`` (default: ``<model folder>/onnx``).

    Writes ``model.onnx``, ``model.int8.onnx`` (unless ``int8=False``) and ``onnx.json``, atomically. The fp32 export
    is checked against the torch model on :func:`check_signal` (a :class:`ModelError` if it differs by more than
    :data:`FP32_TOLERANCE`); the int8 model's difference is measured and recorded, not bounded (quantisation error is
    the point of measuring WER instead, see ``docs/speed.md``). Returns the folder.
    """
    from .model.adapters import merge_adapters
    from .model.load import load_model

    loaded = load_model(model, device="cpu", allow_pickle=allow_pickle) if isinstance(model, (str, os.PathLike)) \
        else model
    source_dir = Path(loaded.path) if loaded.path and Path(loaded.path).is_dir() else None
    if out_dir is None:
        if source_dir is None:
            raise UserError("the model is not a local folder: pass an output folder for the ONNX export")
        out_dir = source_dir / ONNX_SUBDIR
    net = unwrap(loaded.model)
    if any(".lora_" in n for n, _ in net.named_parameters()):
        net = merge_adapters(net)
    net = net.float().cpu().eval()
    num_bytes = sum(p.numel() * 4 for p in net.parameters())
    if num_bytes > MAX_INLINE_BYTES:
        raise UserError(f"the model has {num_bytes / 1e9:.1f} GB of fp32 weights; ONNX export handles models up to "
                        f"{MAX_INLINE_BYTES / 1e9:.1f} GB (one .onnx file)")
    config = net.config
    extractor = getattr(loaded.processor, "feature_extractor", loaded.processor)
    signal = check_signal()
    reference = Recognizer(loaded, InferenceOptions(device="cpu", precision="fp32")).log_probs([signal])[0]

    def write(tmp: Path) -> None:
        _export_graph(net, tmp / "model.onnx")
        files = {"fp32": "model.onnx"}
        if int8:
            framewise = _export_int8(net, tmp)
            files["int8"] = "model.int8.onnx"
        meta = {
            "format": ONNX_FORMAT,
            "files": files,
            "opset": OPSET,
            "input": "input_values",
            "output": "log_probs",
            "vocab": list(loaded.vocab),
            "blank_id": int(loaded.blank_id),
            "lang": loaded.lang,
            "normalizer": loaded.normalizer_name,
            "do_normalize": bool(getattr(extractor, "do_normalize", True)),
            "sample_rate": int(getattr(extractor, "sampling_rate", SAMPLE_RATE)),
            "conv_kernel": list(config.conv_kernel),
            "conv_stride": list(config.conv_stride),
            "feat_extract_norm": str(getattr(config, "feat_extract_norm", "group")),
            "source": str(loaded.path),
            "source_weights": weights_fingerprint(source_dir) if source_dir is not None else None,
            "torch": torch.__version__,
        }
        if int8:
            meta["int8_cnn"] = "framewise matmul" if framewise else "fp32 convolutions"
        if loaded.record is not None:  # the model's record, where every reader of a model folder looks for it
            (tmp / RECORD_FILE).write_text(json.dumps(loaded.record.to_dict(), indent=2, ensure_ascii=False) + "\n",
                                           encoding="utf-8")
        meta["check"] = _check(tmp, meta, signal, reference)
        (tmp / ONNX_META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    return atomic_folder_write(out_dir, write)


def _export_graph(net: nn.Module, path: Path) -> None:
    example = torch.from_numpy(check_signal())[None]
    samples = torch.export.Dim("samples", min=400)  # the CNN's receptive field: shorter input has no frame
    batch = torch.export.Dim("batch", min=1)
    for name in ("torch.onnx", "onnxscript"):  # per-op progress and "torchvision is not installed" notes
        logging.getLogger(name).setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(_LogProbs(net), (example,), str(path), input_names=["input_values"],
                              output_names=["log_probs"], dynamic_shapes={"input_values": {0: batch, 1: samples}},
                              opset_version=OPSET, dynamo=True, external_data=False, verbose=False)
        except Exception as exc:
            raise ModelError(f"ONNX export failed ({type(exc).__name__}: {str(exc).splitlines()[0][:300]})")


def _export_int8(net: nn.Module, folder: Path) -> bool:
    """Write ``folder/model.int8.onnx``; True when its CNN is a :class:`_FramewiseCNN` (int8 too), False when the
    model's CNN is not one it supports and the int8 file is the quantised fp32 graph (its convolutions fp32)."""
    holder = next((m for m in net.modules() if _FramewiseCNN.supports(getattr(m, "feature_extractor", None))), None)
    if holder is None:
        _quantize(folder / "model.onnx", folder / "model.int8.onnx")
        return False
    encoder = holder.feature_extractor
    graph = folder / "model.int8-fp32.onnx"  # the framewise graph before quantisation; not kept
    holder.feature_extractor = _FramewiseCNN(encoder)
    try:
        _export_graph(net, graph)
    finally:
        holder.feature_extractor = encoder  # the caller's model is left as it came
    _quantize(graph, folder / "model.int8.onnx")
    graph.unlink()
    return True


def _quantize(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # it logs "consider pre-processing" to the root logger; shape inference adds nothing
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                         per_channel=True)
    finally:
        root.setLevel(level)


def _check(folder: Path, meta: dict, signal: np.ndarray, reference: np.ndarray) -> dict:
    """Run every exported file on ``signal`` with the ONNX engine and compare with torch's ``reference``."""
    (folder / ONNX_META_FILE).write_text(json.dumps(meta), encoding="utf-8")  # the engine reads it
    out = {"signal_s": CHECK_SECONDS}
    for precision in meta["files"]:
        got = OnnxRecognizer(folder, InferenceOptions(device="cpu", precision=precision)).log_probs([signal])[0]
        if got.shape != reference.shape:
            raise ModelError(f"the ONNX {precision} model gave {got.shape[0]} frames, torch {reference.shape[0]}")
        diff = float(np.abs(got - reference).max())
        if precision == "fp32" and not diff <= FP32_TOLERANCE:
            raise ModelError(f"the ONNX fp32 export differs from the torch model by {diff:.2g} in log-probability "
                             f"(more than {FP32_TOLERANCE:g}): not exported")
        out[precision] = {"max_abs_log_prob_diff": diff,
                          "argmax_agreement": float((got.argmax(-1) == reference.argmax(-1)).mean())}
    return out
