"""A wav2vec2 CTC forward pass split into segments, so a frozen prefix can be computed once and cached.

Segments of ``Wav2Vec2ForCTC`` (L transformer layers)::

    0            feature_encoder      CNN                                   wave (samples,) → (T, C)
    1            feature_projection   LayerNorm + Linear + dropout          (T, C) → (T, H)
    2            pos_conv             + positional conv [+ LayerNorm (post-LN models)] + dropout
    3 … 3+L-1    layers.i             transformer layer i
    3+L          head                 [final LayerNorm (stable-LN models)] + dropout + lm_head → (T, V)

The *boundary* of a stage is the first segment holding a trainable parameter. Everything below it is frozen and runs
in eval mode, per utterance and unpadded — exactly what inference on that utterance computes — so its output can be
cached across epochs (:mod:`asr_transfer.training.cache`). Segments from the boundary up run batched on padded tensors
with an
attention mask, so padding never changes a real frame's value. Frozen segments above the boundary run in eval mode
too (no dropout in weights that do not learn).

SpecAugment cannot live inside a cached prefix (a cached value cannot be re-masked), so masks are drawn at the
boundary instead: after the feature projection when that trains (HF's own place, with ``masked_spec_embed``), zeros at
the input of the first trainable transformer layer otherwise, and off when only the head trains. Cached and uncached
training therefore compute the same function. LayerDrop applies to trainable layers only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .heads import logits_by_head

_LAYER_RE = re.compile(r"encoder\.layers\.(\d+)\.")


def unwrap(model: nn.Module) -> nn.Module:
    """The ``Wav2Vec2ForCTC`` inside DDP/peft wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module) and not hasattr(model, "wav2vec2"):
            model = model.module
        elif hasattr(model, "get_base_model") and not hasattr(model, "wav2vec2"):
            model = model.get_base_model()
        else:
            return model


def num_segments(model: nn.Module) -> int:
    return 4 + unwrap(model).config.num_hidden_layers


def segment_of(name: str, num_layers: int, stable_layer_norm: bool) -> int:
    """Segment index of a parameter name of ``Wav2Vec2ForCTC`` (peft prefixes are ignored)."""
    if "feature_extractor." in name:
        return 0
    if "feature_projection." in name or "masked_spec_embed" in name:
        return 1
    if "pos_conv_embed." in name:
        return 2
    m = _LAYER_RE.search(name)
    if m:
        return 3 + int(m.group(1))
    if "encoder.layer_norm." in name:
        return 3 + num_layers if stable_layer_norm else 2
    return 3 + num_layers  # lm_head and anything above the encoder


def trainable_boundary(model: nn.Module) -> int:
    """First segment with a trainable parameter (``num_segments`` when nothing trains)."""
    base = unwrap(model)
    cfg = base.config
    segs = [
        segment_of(n, cfg.num_hidden_layers, cfg.do_stable_layer_norm)
        for n, p in base.named_parameters()
        if p.requires_grad
    ]
    return min(segs) if segs else num_segments(base)


def segment_trains(model: nn.Module) -> list[bool]:
    base = unwrap(model)
    cfg = base.config
    out = [False] * num_segments(base)
    for n, p in base.named_parameters():
        if p.requires_grad:
            out[segment_of(n, cfg.num_hidden_layers, cfg.do_stable_layer_norm)] = True
    return out


@dataclass(frozen=True)
class MaskOptions:
    """SpecAugment settings (applied at the boundary, see module docstring)."""

    time_prob: float = 0.0
    time_length: int = 10
    feature_prob: float = 0.0
    feature_length: int = 10
    layerdrop: float = 0.0


def _set_modes(base: nn.Module, trains: list[bool], training: bool) -> None:
    """Train mode only for segments that learn; frozen ones run deterministically (eval)."""
    w = base.wav2vec2
    L = base.config.num_hidden_layers
    w.feature_extractor.train(training and trains[0])
    w.feature_projection.train(training and trains[1])
    w.encoder.pos_conv_embed.train(training and trains[2])
    w.encoder.dropout.train(training and trains[2])
    for i, layer in enumerate(w.encoder.layers):
        layer.train(training and trains[3 + i])
    base.dropout.train(training and trains[3 + L])


def run_segments(base: nn.Module, x: torch.Tensor, start: int, stop: int, lengths: torch.Tensor | None = None,
                 training: bool = False, trains: list[bool] | None = None, masks: MaskOptions | None = None,
                 rng: np.random.Generator | None = None) -> torch.Tensor:
    """Run segments ``[start, stop)`` on ``x``.

    Args:
        x: ``(batch, samples)`` waveform when ``start == 0``, else ``(batch, frames, dim)`` boundary features.
        lengths: real lengths (samples for segment 0 input, frames otherwise); ``None`` means no padding.
        training: apply dropout/LayerDrop/SpecAugment in trainable segments.
    Returns:
        ``(batch, frames, dim)`` features, or ``(batch, frames, vocab)`` logits when ``stop`` is past the head.
    """
    base = unwrap(base)
    cfg = base.config
    L = cfg.num_hidden_layers
    w = base.wav2vec2
    trains = trains or [False] * (4 + L)
    _set_modes(base, trains, training)
    masks = masks or MaskOptions()
    h = x
    frame_mask = None  # (batch, frames) bool, True = real frame
    if start == 0:
        h = w.feature_extractor(h).transpose(1, 2)  # (B, T, C)
        if lengths is not None:
            lengths = base._get_feat_extract_output_lengths(lengths).to(torch.long)
    if lengths is not None:  # callers may keep lengths on the CPU while the model runs on a GPU
        frame_mask = torch.arange(h.shape[1], device=h.device)[None, :] < lengths.to(h.device)[:, None]
    # Masks go in front of segment max(start, 2): after the projection (HF's place) or at the boundary layer.
    mask_at = max(start, 2) if start < 3 + L else None
    for seg in range(max(start, 1), stop):
        if training and seg == mask_at:
            h = _spec_augment(base, h, frame_mask, masks, rng, use_embed=(seg == 2))
        if seg == 1:
            h, _ = w.feature_projection(h)
        elif seg == 2:
            if frame_mask is not None:
                h = h.masked_fill(~frame_mask[..., None], 0.0)
            h = h + w.encoder.pos_conv_embed(h)
            if not cfg.do_stable_layer_norm:
                h = w.encoder.layer_norm(h)
            h = w.encoder.dropout(h)
        elif seg < 3 + L:
            i = seg - 3
            if training and trains[seg] and masks.layerdrop > 0 and rng is not None and rng.random() < masks.layerdrop:
                continue
            attn = None
            if frame_mask is not None and not bool(frame_mask.all()):
                from transformers.masking_utils import create_bidirectional_mask

                attn = create_bidirectional_mask(config=cfg, inputs_embeds=h, attention_mask=frame_mask)
            h = w.encoder.layers[i](h, attention_mask=attn)
        else:
            h = base.lm_head(head_input(base, h))
    return h


def head_input(base: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """The head segment up to its linear layer: [final LayerNorm (stable-LN models)] + dropout, ``(B, T, H)``."""
    if base.config.do_stable_layer_norm:
        h = base.wav2vec2.encoder.layer_norm(h)
    return base.dropout(h)


def _spec_augment(base, h, frame_mask, masks: MaskOptions, rng, use_embed: bool) -> torch.Tensor:
    """Time/feature masks at the boundary. In front of segment 2 time-masked frames get ``masked_spec_embed`` (HF)."""
    if rng is None or (masks.time_prob <= 0 and masks.feature_prob <= 0):
        return h
    B, T, D = h.shape
    lengths = frame_mask.sum(1).tolist() if frame_mask is not None else [T] * B
    h = h.clone()
    if masks.time_prob > 0:
        tmask = torch.zeros(B, T, dtype=torch.bool, device=h.device)
        for b, n in enumerate(lengths):
            span = masks.time_length
            if n <= span:
                continue
            num = int(masks.time_prob * n / span + rng.random())
            for s in rng.integers(0, n - span, size=num):
                tmask[b, s : s + span] = True
        if tmask.any():
            # HF creates masked_spec_embed only when the model's own config masks (mask_time_prob or
            # mask_feature_prob > 0); a source saved with both at 0, such as the shipped en-synth-small, has none,
            # so its masked frames get zeros, as at every other boundary.
            embed = getattr(base.wav2vec2, "masked_spec_embed", None) if use_embed else None
            h[tmask] = embed.to(h.dtype) if embed is not None else 0.0
    if masks.feature_prob > 0:
        span = masks.feature_length
        num = int(masks.feature_prob * D / span + rng.random())
        for s in rng.integers(0, max(1, D - span), size=num):
            h[:, :, s : s + span] = 0.0
    return h


def prefix_features(model: nn.Module, wave: torch.Tensor, boundary: int) -> torch.Tensor:
    """Frozen-prefix output for ONE utterance: ``(samples,)`` wave → ``(frames, dim)`` at the boundary (eval, no
    grad)."""
    base = unwrap(model)
    with torch.no_grad():
        if boundary == 0:  # nothing is frozen below the CNN: the "feature" is the normalised wave itself
            return wave
        out = run_segments(base, wave[None], 0, boundary, training=False)
    return out[0]


# Training batches are padded up to a multiple of these. oneDNN (bf16 on AMX especially) builds a kernel for each new
# input shape; with every batch a new length that rebuild was ~25 % of a CPU step (measured 0.40 s vs 0.31 s per
# 20-s bf16 step), and a quantum of 0.5 s costs at most 0.5 s of padding per batch. Padding is masked everywhere.
PAD_QUANTUM_SAMPLES = 8000  # 0.5 s at 16 kHz: raw-waveform batches (the CNN trains)
PAD_QUANTUM_FRAMES = 25  # 0.5 s at 20 ms per frame: boundary-feature batches


def pad_features(feats: list[torch.Tensor], multiple: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad ``[(frames_i, dim)]`` (or ``[(samples_i,)]``) to a batch; returns ``(batch, T, dim)`` and lengths.

    ``T`` is the longest length rounded up to a multiple of ``multiple`` (1: the longest length).
    """
    # On the features' device: the frame masks and GroupNorm statistics compare them with aranges made there.
    lengths = torch.tensor([f.shape[0] for f in feats], dtype=torch.long, device=feats[0].device)
    padded = nn.utils.rnn.pad_sequence(feats, batch_first=True)
    extra = -padded.shape[1] % multiple
    if extra:
        padded = F.pad(padded, (0, 0, 0, extra) if padded.dim() == 3 else (0, extra))
    return padded, lengths


def group_norm_cnn(base: nn.Module, waves: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The CNN of a ``feat_extract_norm="group"`` model on a padded batch, every real frame as if run unpadded.

    Only conv layer 0 carries a norm: a GroupNorm with one group per channel, i.e. statistics over time, which
    padding would change. So layer 0's convolution runs batched and its norm is torch's group norm over each
    utterance's real frames only (:func:`_group_norm_rows`). Layers 1-6 have no norm and
    unpadded ("valid") convolutions, so a real output frame reads real input frames only, and they run batched too.
    Running layer 0 per utterance instead (a new input shape, so a new oneDNN kernel, for every utterance) was 23 % of
    py-spy's samples in its forward alone, and a bf16 training step of a 6-layer model took 0.44 s instead of 0.34 s.

    Args:
        waves: ``(batch, samples)`` normalised 16-kHz waves, right-padded.
        lengths: ``(batch,)`` real sample counts.
    Returns:
        ``(batch, frames, conv_dim[-1])`` CNN features and ``(batch,)`` real frame counts.
    """
    base = unwrap(base)
    layers = base.wav2vec2.feature_extractor.conv_layers
    first = layers[0]
    h = first.conv(waves[:, None, :])  # (B, C, T0)
    n0 = _conv_lengths(first.conv, lengths.to(waves.device)).clamp(min=1).tolist()
    h = first.activation(_group_norm_rows(first.layer_norm, h, n0))
    for layer in layers[1:]:
        h = layer(h)
    return h.transpose(1, 2), base._get_feat_extract_output_lengths(lengths).to(torch.long)


def _group_norm_rows(norm: nn.GroupNorm, h: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """``norm`` applied to each row of ``(B, C, T)`` over its first ``lengths[b]`` frames only; padded frames are 0.

    torch's own group norm kernel, once per row: base-960h's first layer (512 channels at 3.2 kHz) took 4.8x longer
    with its statistics from ``var_mean`` and a broadcast scale-and-shift (0.82 s against 0.17 s for 40 clips,
    2026-12-08). Statistics in fp32, as GroupNorm under autocast; a bf16 input comes back bf16.
    """
    weight, bias = norm.weight.float(), norm.bias.float()
    if all(n == h.shape[-1] for n in lengths):  # nothing padded (a clip alone, or equal lengths): one call
        return F.group_norm(h.float(), norm.num_groups, weight, bias, norm.eps).to(h.dtype)
    rows = [F.pad(F.group_norm(h[b : b + 1, :, :n].float(), norm.num_groups, weight, bias, norm.eps),
                  (0, h.shape[-1] - n)) for b, n in enumerate(lengths)]
    return torch.cat(rows).to(h.dtype)


def _conv_lengths(conv: nn.Conv1d, lengths: torch.Tensor) -> torch.Tensor:
    """Output lengths of an unpadded 1-D convolution."""
    return torch.div(lengths - conv.kernel_size[0], conv.stride[0], rounding_mode="floor") + 1


def output_lengths(model: nn.Module, boundary: int, lengths: torch.Tensor) -> torch.Tensor:
    """Frame counts at the output for boundary-level ``lengths`` (samples when ``boundary == 0``)."""
    if boundary == 0:
        return unwrap(model)._get_feat_extract_output_lengths(lengths).to(torch.long)
    return lengths


def ctc_loss_per_utt(
    logits: torch.Tensor, out_lengths: torch.Tensor, labels: list[tuple[int, ...]], blank_id: int
) -> torch.Tensor:
    """CTC loss per utterance divided by its label length, ``(batch,)`` in fp32 (``zero_infinity`` on)."""
    log_probs = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)  # (T, B, V)
    targets = torch.tensor([t for lab in labels for t in lab], dtype=torch.long, device=logits.device)
    target_lengths = torch.tensor([len(lab) for lab in labels], dtype=torch.long, device=logits.device)
    loss = F.ctc_loss(log_probs, targets, out_lengths.to(logits.device), target_lengths, blank=blank_id,
                      reduction="none", zero_infinity=True)
    return loss / target_lengths.clamp(min=1)


class Suffix(nn.Module):
    """The trainable part ``[boundary, end)`` as one module, so DDP sees a forward() it can hook for gradient sync."""

    def __init__(self, model: nn.Module, boundary: int, masks: MaskOptions):
        super().__init__()
        self.model = model
        self.boundary = boundary
        self.masks = masks
        self.trains = segment_trains(model)

    def forward(
        self, feats: torch.Tensor, lengths: torch.Tensor, rng: np.random.Generator | None = None, training: bool = True,
        heads: Sequence[str] | None = None,
    ):
        """``(batch, frames, vocab)`` logits of the target head; with ``heads`` (one head name per row, see
        :func:`asr_transfer.model.heads.logits_by_head`) each row's logits through its own head, by head name."""
        base = unwrap(self.model)
        # With per-row heads the shared segments stop below the head; its LayerNorm + dropout run once for all rows.
        stop = num_segments(base) - (heads is not None)
        if self.boundary == 0 and unwrap(self.model).config.feat_extract_norm == "layer":
            # Trainable CNN with per-frame LayerNorm: a real output frame sees only real samples, so the padded batch
            # gives the same real frames as per-utterance runs, 2-4x faster on CPU (one big conv instead of many).
            h = run_segments(base, feats, 0, stop, lengths, training, self.trains, self.masks, rng)
        elif self.boundary == 0:
            _set_modes(base, self.trains, training)
            h, frame_lengths = group_norm_cnn(base, feats, lengths)
            h = run_segments(base, h, 1, stop, frame_lengths, training, self.trains, self.masks, rng)
        else:
            h = run_segments(base, feats, self.boundary, stop, lengths, training, self.trains, self.masks, rng)
        return h if heads is None else logits_by_head(base, head_input(base, h), heads)
