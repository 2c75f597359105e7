"""Corpus importers and generators: each module turns one kind of source into JSONL manifests.

Importers (each returns an :class:`~asr_transfer.corpora.splits.ImportSummary` and writes ``<split>.jsonl``):

- :func:`asr_transfer.corpora.commonvoice.prepare_commonvoice` — a Common Voice language folder (official splits).
- :func:`asr_transfer.corpora.folder.prepare_folder` — audio files with sibling ``.txt``/``.lab`` transcripts.
- :func:`asr_transfer.corpora.tabular.prepare_tabular` — a CSV/TSV table of audio paths and texts.
- :func:`asr_transfer.corpora.librispeech.prepare_librispeech` — the LibriSpeech folder layout.
- :func:`asr_transfer.corpora.splits.split_utterances` — speaker-disjoint train/dev/test splits by duration.
"""
