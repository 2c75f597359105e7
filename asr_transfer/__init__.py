"""asr-transfer: teach an English wav2vec2 CTC recogniser another language with little data.

Public API (imported lazily so that ``import asr_transfer`` stays cheap):

- :func:`load_model` — a source or adapted model with its processor and record.
- :func:`transcribe` — audio files to :class:`~asr_transfer.transcription.Transcript` objects.
- :func:`evaluate` — a model over a manifest to WER/CER summaries.
- :func:`train` — staged transfer training from a :class:`~asr_transfer.config.TrainConfig`.
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load_model", "transcribe", "evaluate", "train"]


def __getattr__(name: str):
    if name == "load_model":
        from .model.load import load_model

        return load_model
    if name == "transcribe":
        from .transcription import transcribe

        return transcribe
    if name == "evaluate":
        from .evaluation import evaluate

        return evaluate
    if name == "train":
        from .training.loop import train

        return train
    raise AttributeError(f"module 'asr_transfer' has no attribute {name!r}")
