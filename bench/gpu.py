"""GPU section: bf16 fine-tuning throughput with model FLOPs utilisation (MFU), and transcription real-time factor,
for a base-960h-sized model (``tests/assets/wav2vec2-base-960h/config.json``, random weights: speed does not depend
on the weights).

Fine-tuning: batches of ``--batch`` utterances × ``--utt-s`` seconds of noise audio with random labels, AdamW,
bf16 autocast, CNN frozen (as every schedule here keeps it). Two step kinds:

- ``HF forward``: ``Wav2Vec2ForCTC(input_values, labels=...)`` — the full model every step (what a plain loop does);
- ``ours, CNN cached``: our trainer's trainable suffix (``asr_transfer.model.forward.Suffix``) on precomputed CNN
  features,
  i.e. the steady state of our stage that trains layers + projection.

FLOPs per step are counted with ``torch.utils.flop_counter.FlopCounterMode`` (matmuls/convs, forward + backward);
MFU = counted FLOPs / step time / the GPU's dense bf16 peak (a small table by device name, or ``--peak-tflops``).
Transcription: ``Recognizer.log_probs`` over ``--rtf-minutes`` of 10-s clips, fp32 and bf16; RTF = seconds / audio s.

Without CUDA it records that it was skipped (``--allow-cpu`` runs the same code on the CPU at micro size, for tests).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import common
import numpy as np
from common import BASE960_CONFIG, Section, fmt, table

from asr_transfer.environment import cpu_model

# Dense (no sparsity) bf16 tensor-core peaks, FLOP/s, from the vendors' data sheets.
PEAK_BF16 = (("H100 PCIe", 756e12), ("H100", 989.4e12), ("H200", 989.4e12), ("GH200", 989.4e12), ("A100", 312e12),
             ("L40S", 362e12), ("L4", 121e12), ("A10G", 70e12), ("A10", 125e12), ("RTX 4090", 165e12))


def peak_flops(name: str, override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    for key, value in PEAK_BF16:
        if key in name:
            return value
    return None


def build_model(config_path: Path, device, overrides: dict | None = None):
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    cfg = Wav2Vec2Config.from_json_file(str(config_path))
    for k, v in (overrides or {}).items():
        setattr(cfg, k, v)
    cfg.ctc_loss_reduction = "mean"
    cfg.ctc_zero_infinity = True
    cfg.layerdrop = 0.0
    torch.manual_seed(0)
    return Wav2Vec2ForCTC(cfg).to(device)


def make_batch(model, batch: int, utt_s: float, device, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    samples = int(utt_s * 16000)
    x = (0.1 * torch.randn(batch, samples, generator=g)).to(device)
    frames = int(model._get_feat_extract_output_lengths(torch.tensor(samples)))
    labels = torch.randint(5, model.config.vocab_size, (batch, max(1, frames // 4)), generator=g).to(device)
    return x, labels


def time_steps(step, warmup: int, steps: int, sync) -> float:
    for _ in range(warmup):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return (time.perf_counter() - t0) / steps


def count_flops(step) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def finetune_rows(model, device, batch: int, utt_s: float, warmup: int, steps: int, dtype, peak: float | None, sync):
    import torch

    from asr_transfer.model.forward import MaskOptions, Suffix, ctc_loss_per_utt, prefix_features

    model.train()
    model.freeze_feature_encoder()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    x, labels = make_batch(model, batch, utt_s, device)
    audio_s = batch * utt_s

    def hf_step():
        with torch.autocast(device.type, dtype=dtype):
            loss = model(input_values=x, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    # Ours in its steady state: CNN output cached (boundary 1), the suffix trains on padded features.
    feats = torch.stack([prefix_features(model, x[i], 1) for i in range(batch)])
    lengths = torch.full((batch,), feats.shape[1], dtype=torch.long)
    suffix = Suffix(model, 1, MaskOptions(time_prob=0.05, time_length=10))
    rng = np.random.default_rng(0)
    label_list = [tuple(row.tolist()) for row in labels.cpu()]

    def our_step():
        with torch.autocast(device.type, dtype=dtype):
            logits = suffix(feats, lengths, rng, training=True)
        loss = ctc_loss_per_utt(logits, lengths.to(device), label_list, model.config.pad_token_id).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    rows, raw = [], {}
    for name, step in (("HF forward (full model)", hf_step), ("ours, CNN cached", our_step)):
        flops = count_flops(step)
        sec = time_steps(step, warmup, steps, sync)
        achieved = flops / sec
        mfu = achieved / peak if peak else None
        raw[name] = {"step_s": sec, "flops_per_step": flops, "achieved_tflops": achieved / 1e12, "mfu": mfu,
                     "audio_s_per_s": audio_s / sec}
        rows.append([name, f"{batch}×{utt_s:g}s", sec, audio_s / sec, flops / 1e12, achieved / 1e12, mfu])
    return rows, raw


def rtf_rows(model, device, minutes: float, batch_s: float):
    from asr_transfer.inference import InferenceOptions, Recognizer
    from asr_transfer.model.load import LoadedModel
    from asr_transfer.model.record import make_processor
    from asr_transfer.vocab import english_source_vocab

    model.eval()
    vocab = english_source_vocab()
    id2tok = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])][: model.config.vocab_size]
    loaded = LoadedModel(model, make_processor(vocab), None, id2tok, 0, "random", "en", "en-v1")
    rng = np.random.default_rng(0)
    n = max(1, int(minutes * 6))
    waves = [(0.1 * rng.standard_normal(160000)).astype(np.float32) for _ in range(n)]
    rows, raw = [], {}
    for precision in ("fp32", "bf16"):
        rec = Recognizer(loaded, InferenceOptions(device=str(device), precision=precision, batch_s=batch_s))
        rec.log_probs(waves[:2])  # warm-up
        sync_device(device)
        t0 = time.perf_counter()
        rec.log_probs(waves)
        sync_device(device)
        sec = time.perf_counter() - t0
        rtf = sec / (n * 10.0)
        raw[precision] = {"seconds": sec, "audio_s": n * 10.0, "rtf": rtf, "ran_as": rec.precision}
        rows.append([precision if rec.precision == precision else f"{precision} (ran {rec.precision})", n * 10.0, sec,
                     rtf, 1 / rtf])
    return rows, raw


def sync_device(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None) -> int:
    p = common.base_parser(__doc__.split("\n")[0])
    p.add_argument("--config", default=str(BASE960_CONFIG), help="Wav2Vec2Config JSON (random weights)")
    p.add_argument("--batch", type=int, default=None, help="utterances per step (default 8; --full 16)")
    p.add_argument("--utt-s", type=float, default=10.0)
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 10; --full 30)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rtf-minutes", type=float, default=None, help="audio for the RTF rows (default 10; --full 60)")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the GPU (default: by name)")
    p.add_argument("--allow-cpu", action="store_true", help="run on the CPU when there is no GPU (smoke test only)")
    p.add_argument(
        "--config-set", action="append", default=[], help="override a config field, e.g. num_hidden_layers=2"
    )
    args = p.parse_args(argv)
    common.setup_threads(args.threads)
    import torch

    section = Section(
        "gpu: bf16 fine-tuning throughput, MFU and transcription RTF" + (" (--full)" if args.full else "")
    ).start()
    if not torch.cuda.is_available() and not args.allow_cpu:
        print("gpu.py: no CUDA device; skipped")
        section.add("Skipped: no CUDA device on this machine (`torch.cuda.is_available()` is False).\n")
        section.data = {"skipped": "no CUDA"}
        section.append(args.results)
        return 0
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 RTF rows use TF32 tensor cores, as users would
        torch.backends.cudnn.allow_tf32 = True
    overrides = {}
    for item in args.config_set:
        k, _, v = item.partition("=")
        try:
            overrides[k] = json.loads(v)
        except json.JSONDecodeError:
            overrides[k] = v
    model = build_model(Path(args.config), device, overrides)
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    batch = args.batch or (16 if args.full else 8)
    steps = args.steps or (30 if args.full else 10)
    rtf_min = args.rtf_minutes or (60.0 if args.full else 10.0)
    peak = peak_flops(name, args.peak_tflops) if device.type == "cuda" else args.peak_tflops and args.peak_tflops * 1e12
    dtype = torch.bfloat16
    rows, raw = finetune_rows(
        model, device, batch, args.utt_s, args.warmup, steps, dtype, peak, lambda: sync_device(device)
    )
    section.add(f"Device: {name}; model {Path(args.config).parent.name} config, {params_m:.1f} M parameters, random "
                f"weights; bf16 autocast, AdamW, CNN frozen; peak bf16 {fmt(peak / 1e12 if peak else None)} TFLOP/s "
                "(dense, data sheet).\n")
    section.add(table(["step", "batch", "s/step", "audio-s/s", "TFLOP/step", "achieved TFLOP/s", "MFU"], rows) + "\n")
    rrows, rraw = rtf_rows(model, device, rtf_min, batch_s=160.0)
    section.add(table(["transcription precision", "audio s", "seconds", "RTF", "× real time"], rrows) + "\n")
    section.data = {"device": name, "params_m": params_m, "finetune": raw, "rtf": rraw, "batch": batch,
                    "utt_s": args.utt_s, "steps": steps}
    section.append(args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
