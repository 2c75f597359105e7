"""Pre-training the English source model (``models/en-synth-small``) from scratch on synthetic English speech.

The steps, each reusing the module that owns it:

1. an English espeak-ng corpus (:func:`asr_transfer.corpora.synth.prepare_synth`): train on the ``source`` voice
   variants, dev/test on the ``held-out`` ones and sentences never used in training; random speed, pitch, level and
   white/pink noise per utterance (reused when it already exists with the same settings);
2. a randomly initialised ``Wav2Vec2ForCTC`` built from a ``Wav2Vec2Config`` JSON (``model.init_config``) with
   base-960h's vocabulary layout (:func:`asr_transfer.vocab.english_source_vocab`), so that transfer code written
   for base-960h works on it unchanged;
3. the one training loop (:func:`asr_transfer.training.loop.train`), one invocation per run — a curriculum: the first
   ``curriculum_stages`` stages see only utterances <= ``curriculum_max_utt_s`` (short utterances leave the CTC
   blank plateau much sooner); every remaining stage is a run of its own on the full manifest, starting from the
   previous run's model (``head_init = keep``, exactly the transfer code path). All are resumable and time-boxable;
4. greedy evaluation (:func:`asr_transfer.evaluation.evaluate`) on the held-out synthetic test set and on real
   English (``../shared/realspeech/en.jsonl`` when present);
5. export of the best dev-CER checkpoint to ``out`` in HF ``save_pretrained`` form with a model card
   (:mod:`asr_transfer.training.source_card`).
"""
from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

from ..config import TrainConfig, load_config
from ..corpora.synth import prepare_synth
from ..environment import hardware
from ..errors import ConfigError, UserError
from ..evaluation import evaluate
from ..files import atomic_folder_write
from ..model.record import ModelRecord
from ..text import get_normalizer
from ..vocab import english_source_vocab, save_vocab
from .source_card import WALL_LOG, model_card, run_facts

MAX_MODEL_MB = 25.0  # the size budget for the shipped folder
REQUIRED_FILES = ("config.json", "model.safetensors", "vocab.json", "preprocessor_config.json", "tokenizer_config.json",
                  "asr_transfer.json", "README.md")


@dataclass(frozen=True)
class PretrainOptions:
    """What ``asr-transfer pretrain-source`` does; paths are relative to the working directory."""

    config: str = "tools/pretrain_source.toml"  # TrainConfig (TOML/JSON) with model.init_config and the stages
    overrides: tuple[str, ...] = ()  # --set key=value on that config
    out: str = "models/en-synth-small"
    corpus_dir: str = "data/en-synth-source-1200"
    runs_dir: str = "runs/en-synth-small"
    minutes: float = 1200.0  # train audio, 20k sentences (recipe 2 used 150: docs/source-model.md)
    dev_minutes: float = 4.0
    test_minutes: float = 8.0
    snr_db: float | None = 20.0  # corpus noise (white or pink per utterance); the trainer can add a range on top
    corpus_seed: int = 0
    jobs: int = 2
    curriculum_stages: int = 1  # leading stages trained on short utterances only
    curriculum_max_utt_s: float = 4.0
    realspeech: str | None = "../shared/realspeech/en.jsonl"
    command: str = ""  # the command line, for the model card

    def __post_init__(self):
        if self.curriculum_stages < 0:
            raise ConfigError("curriculum_stages must be >= 0")
        if not self.curriculum_max_utt_s > 0:
            raise ConfigError("curriculum_max_utt_s must be > 0")


@dataclass
class PretrainResult:
    out: Path | None  # the exported model folder; None when a time budget paused training
    runs: list[Path] = field(default_factory=list)
    evaluations: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------------ configs
def run_configs(options: PretrainOptions, manifests: dict, vocab_path: Path) -> list:
    """The :class:`~asr_transfer.config.TrainConfig` of each run, in order.

    The leading ``curriculum_stages`` stages form one run on short utterances (``short``); every later stage is a
    run of its own on the full manifest (named after the stage), starting from the previous run's ``final/`` model
    with a fresh optimiser. One run per stage lets a longer schedule be added later without invalidating the finished
    runs before it.
    """

    base = load_config(TrainConfig, options.config, options.overrides)
    if not base.model.init_config:
        raise ConfigError("model.init_config (a Wav2Vec2Config JSON) is required to pre-train from scratch",
                          path=options.config)
    n = options.curriculum_stages
    if n >= len(base.stages):
        raise ConfigError(f"curriculum_stages ({n}) must leave at least one of the {len(base.stages)} stages for the "
                          "full manifest", path=options.config)
    runs = Path(options.runs_dir)
    data = replace(base.data, train_manifest=str(manifests["train"]), dev_manifest=str(manifests["dev"]))
    model = replace(base.model, vocab=str(vocab_path), head_init="keep", lang="en")
    configs = []
    if n:
        configs.append(replace(base, model=model, stages=base.stages[:n],
                               data=replace(data, max_utt_s=min(options.curriculum_max_utt_s, data.max_utt_s)),
                               train=replace(base.train, output_dir=str(runs / "short"))))
    for stage in base.stages[n:]:
        if configs:
            model = replace(model, init_config=None, source=str(Path(configs[-1].train.output_dir) / "final"))
        # The first full-manifest run keeps its historical folder name "full".
        name = "full" if not configs or configs[-1].train.output_dir.endswith("short") else stage.name
        configs.append(replace(base, model=model, data=data, stages=(stage,),
                               train=replace(base.train, output_dir=str(runs / name))))
    return configs


# ------------------------------------------------------------------------------------------------------ the run
def pretrain_source(options: PretrainOptions, resume: bool = False, time_budget_s: float | None = None,
                    progress: bool = True) -> PretrainResult:
    """Corpus → random model → curriculum + main training → evaluation → export. See the module docstring.

    ``time_budget_s`` bounds the training time of this invocation (over both runs); when it runs out the current run
    is checkpointed and ``out`` is None: continue with ``resume=True``.
    """

    started = time.time()
    runs_dir = Path(options.runs_dir)
    manifests = prepare_synth(lang="en", out_dir=options.corpus_dir, minutes=options.minutes, seed=options.corpus_seed,
                              voice_set="source", snr_db=options.snr_db, dev_minutes=options.dev_minutes,
                              test_minutes=options.test_minutes, jobs=options.jobs)
    vocab_path = save_vocab(english_source_vocab(), runs_dir / "vocab.json")
    configs = run_configs(options, manifests, vocab_path)
    main = configs[-1]
    result = PretrainResult(out=None)
    for config in configs:
        run_dir = Path(config.train.output_dir)
        result.runs.append(run_dir)
        finished = (run_dir / "final" / "model.safetensors").is_file() and (run_dir / "train_summary.json").is_file()
        if finished and resume:
            continue  # a finished run of this config: its checkpoints and final/ are what a rerun would give
        left = None if time_budget_s is None else time_budget_s - (time.time() - started)
        if left is not None and left <= 0:
            _log_wall(runs_dir, started, "paused")
            return result
        t0 = time.time()
        from .loop import train  # torch: imported by the work, not by `pretrain-source --help` (PretrainOptions)

        out = train(config, resume=resume, progress=progress, time_budget_s=left)
        _log_wall(runs_dir, t0, f"train {run_dir.name}")
        if out.name == "checkpoints":  # paused by the time budget
            return result
    best = Path(main.train.output_dir) / "best"
    chosen = best if (best / "model.safetensors").is_file() else Path(main.train.output_dir) / "final"
    t0 = time.time()
    result.evaluations = evaluate_model(chosen, manifests, options.realspeech, runs_dir / "eval")
    _log_wall(runs_dir, t0, "evaluate")
    result.out = export_model(chosen, options, result, manifests)
    return result


def _log_wall(runs_dir: Path, t0: float, what: str) -> None:
    runs_dir.mkdir(parents=True, exist_ok=True)
    with open(runs_dir / WALL_LOG, "a", encoding="utf-8") as f:
        f.write(
            json.dumps(
                {
                    "what": what,
                    "wall_s": round(time.time() - t0, 1),
                    "end": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    "hardware": hardware(),
                }
            )
            + "\n"
        )


def evaluate_model(model_dir: Path, manifests: dict, realspeech: str | None, out_dir: Path) -> dict:
    """Greedy WER/CER on the synthetic dev and test sets (held-out voices) and on real English, if given."""

    sets = {"synth_dev": manifests["dev"], "synth_test": manifests["test"]}
    if realspeech and Path(realspeech).is_file():
        sets["realspeech_en"] = realspeech
    out = {}
    for name, manifest in sets.items():
        s = evaluate(
            str(model_dir), manifest, decoder="greedy", out_dir=out_dir / name, lang="en", name=name, device="cpu"
        )
        out[name] = {
            k: s.get(k) for k in ("wer", "cer", "wer_ci", "cer_ci", "n_utterances", "audio_s", "rtf", "by_speaker")
        }
        out[name]["manifest"] = str(manifest)
    return out


# ------------------------------------------------------------------------------------------------------ export
def export_model(model_dir: Path, options: PretrainOptions, result: PretrainResult, manifests: dict) -> Path:
    """Write ``options.out`` (HF form + ``asr_transfer.json`` + card) from the trained ``model_dir``; check its size."""
    from ..model.load import load_model

    loaded = load_model(model_dir, device="cpu")
    model, processor = loaded.model, loaded.processor
    vocab = {t: i for i, t in enumerate(loaded.vocab)}
    runs = [run_facts(r) for r in result.runs]
    record = ModelRecord(
        lang="en",
        normalizer=get_normalizer("en").name,
        source_model="scratch",
        head_init="scratch",
        vocab=vocab,
        extra={
            "pretrain": {
                "config": options.config,
                "runs": [str(r) for r in result.runs],
                "steps": sum(r["steps"] for r in runs),
                "evaluations": result.evaluations,
            }
        },
    )
    card = model_card(model, options, result, runs, manifests)

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        if not (tmp / "preprocessor_config.json").is_file():
            processor.feature_extractor.save_pretrained(tmp)  # transformers 5 may write only processor_config.json
        (tmp / "asr_transfer.json").write_text(
            json.dumps(record.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        (tmp / "README.md").write_text(card, encoding="utf-8")
        missing = [n for n in REQUIRED_FILES if not (tmp / n).is_file()]
        if missing:
            raise UserError(f"export is missing {', '.join(missing)}", path=options.out)
        size_mb = sum(p.stat().st_size for p in tmp.iterdir() if p.is_file()) / 1e6
        if size_mb > MAX_MODEL_MB:
            raise UserError(f"the model folder would take {size_mb:.1f} MB > {MAX_MODEL_MB} MB: choose a smaller "
                            "architecture", path=options.config)

    return atomic_folder_write(options.out, write)


def format_summary(result: PretrainResult) -> str:
    if result.out is None:
        return "paused (time budget); continue with --resume"
    rows = [f"model: {result.out}"]
    for name, r in result.evaluations.items():
        rows.append(f"{name}: WER {100 * r['wer']:.1f} %  CER {100 * r['cer']:.1f} %  ({r['n_utterances']} utterances)")
    return "\n".join(rows)


def command_line(argv: Sequence[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)
