"""Numeric precision at inference: the choices, and which one really runs on a device.

Torch-free at import (torch only when asked about a GPU), so that command-line parsers can offer the choices without
paying for torch: ``asr-transfer transcribe --help`` took 3.8 s while it imported torch for this tuple.
"""
from __future__ import annotations

import warnings

from .environment import cpu_supports_bf16
from .errors import UserError

PRECISIONS = ("auto", "fp32", "bf16", "int8")  # int8: dynamic quantisation of the Linear layers, CPU only


def check_precision(precision: str, device_type: str) -> str:
    """The precision that will really run on ``device_type``; warns once when bf16 falls back to fp32.

    ``auto`` is bf16 where the hardware computes it natively (CPUs with AMX or avx512_bf16, CUDA GPUs with bf16) and
    fp32 elsewhere. bf16 moved the shipped model's WER by at most 0.5 points (README "Speed"), so it is
    transcription's default; evaluation keeps fp32, so that scores do not depend on the machine.
    """
    if precision == "auto":
        if device_type == "cuda":
            import torch

            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if device_type == "cpu" and cpu_supports_bf16() else "fp32"
    if precision == "int8" and device_type != "cpu":
        raise UserError("int8 (dynamic quantisation) runs on CPU only; use --precision bf16 on CUDA or --device cpu")
    if precision == "bf16" and device_type == "cpu" and not cpu_supports_bf16():
        _warn_once("bf16 requested but this CPU has no native bf16 (avx512_bf16/amx); using fp32")
        return "fp32"
    return precision


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)
