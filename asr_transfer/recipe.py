"""Per-language recipes: one shared, numbered pipeline; each recipe's TOML states only what differs.

A recipe is ``recipes/<name>/recipe.toml`` on top of ``recipes/defaults.toml`` on top of the dataclass defaults
below, then ``--set key=value`` overrides (later wins). Config is data (tomllib), never code; unknown keys are errors.
The stages (implemented in :mod:`asr_transfer.recipe_stages`) are

====  ==========  =====================================================================================
 0    data        synthetic corpus (espeak-ng) or a Common Voice import (``--cv-root``)
 1    validate    every split checked against the language's normaliser and the source's CTC frame rate
 2    lang        vocab.json from the train text; n-gram LM with the dev/test sentences excluded
 3    baseline    source-only: the raw English head and the zero-shot mapped head, on test (+ zero-shot + LM)
 4    train       staged transfer training, then the from-scratch control (same data, same step budget)
 5    evaluate    the adapted model (and the control) on test: greedy and beam + LM; with ``export.onnx``, its
                  ONNX export too (int8, what ``transcribe`` runs on a CPU)
 6    self-train  (off by default) label untranscribed target audio with the adapted model + LM, keep the confident
                  share, continue training on labelled + pseudo-labelled audio; evaluate it like stage 5
 7    report      report.html + report.md over every system and every training run; the final table
====  ==========  =====================================================================================

Stage 6 (self-train) came after the others; report moved from 6 to 7. A marker is read only for the stage whose name
it records, so an older output folder's ``stage-6.json`` (its report) is not taken for self-training's.

Each finished stage writes ``<out>/.done/stage-N.json`` holding a hash of the config it depends on and of the
markers of the stages it reads from. A rerun skips a stage whose hash still matches, reruns it (and says why) when
its part of the config changed or an earlier stage ran again, and always reruns it with ``--force``.
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import __version__
from .config import TrainConfig, load_config, one_of, option, read_config_data, to_dict
from .errors import PARSE_ERRORS, ConfigError, UserError
from .files import atomic_write_json, read_json_or, sha256_files
from .precision import PRECISIONS
from .recipe_stages import STAGES, StageSpec
from .text import LANGUAGES

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"
# Keys of the nested TrainConfig that the runner fills in from the recipe's own outputs.
RUNNER_KEYS = (
    "model.source",
    "model.lang",
    "model.vocab",
    "data.train_manifest",
    "data.dev_manifest",
    "train.output_dir",
)


@dataclass(frozen=True)
class DataSection:
    kind: str = option(
        "synth (espeak-ng speech from the language's default text) or commonvoice (needs --cv-root)", "synth"
    )
    minutes: float = option("synth: minutes of train audio", 10.0)
    dev_minutes: float | None = option("synth: dev minutes (None: 10% of minutes, at most 10)", None)
    test_minutes: float | None = option("synth: test minutes (None: 10% of minutes, at most 10)", None)
    seed: int = option("synth: sentence order and voice/speed/pitch draws", 0)
    snr_db: float | None = option("synth: add white/pink noise at this SNR (None: clean)", None)
    voice_set: str = option("synth: train voices: target, source or held-out (dev/test always held-out)", "target")
    text_files: tuple[str, ...] = option("synth: text to speak (empty: the language's default text files)", ())
    jobs: int = option("synth: parallel espeak-ng processes", 2)
    cv_splits: tuple[str, ...] = option("commonvoice: official splits to import (train, dev, test needed)",
                                       ("train", "dev", "test"))
    min_duration_s: float = option("commonvoice: skip clips shorter than this", 0.5)
    max_duration_s: float = option("commonvoice: skip clips longer than this", 20.0)
    train_minutes: float | None = option(
        "commonvoice: keep a seeded random subset of train this long (None: all)", None
    )
    source_test: str | None = option("source-language (English) test manifest for retention (unset: synth makes one "
                                     "in stage 0; commonvoice measures no retention)", None)
    source_test_minutes: float | None = option("synth: minutes of English speech by held-out voices made in stage 0 "
                                               "for retention when source_test is unset (None: none)", 2.5)
    source_train: str | None = option("source-language (English) train manifest replayed when train.train.mix.share "
                                      "> 0 (unset: synth makes one in stage 0 with source_train_minutes)", None)
    source_train_minutes: float | None = option(
        "synth: minutes of English speech by the source model's training voices made in stage 0 as the replay set "
        "(train.train.mix), its sentences disjoint from the English test's (None: none)", None)
    train_manifest: str | None = option(
        "train on this manifest instead of the corpus's train split, e.g. `asr-transfer align`'s segments of long "
        "recordings (marked ones are skipped and counted); stage 0 still makes dev/test and keeps the corpus's own "
        "train split as train-corpus.jsonl; vocab, LM text and training read it (None: the corpus's)", None)

    def __post_init__(self):
        one_of("data.kind", self.kind, ("synth", "commonvoice"))
        one_of("data.voice_set", self.voice_set, ("target", "source", "held-out"))
        for key in ("minutes", "dev_minutes", "test_minutes", "train_minutes", "max_duration_s", "source_test_minutes",
                    "source_train_minutes"):
            value = getattr(self, key)
            if value is not None and not value > 0:
                raise ConfigError(f"data.{key} must be > 0, got {value}")
        if self.jobs < 1:
            raise ConfigError(f"data.jobs must be >= 1, got {self.jobs}")
        if self.train_manifest is not None and self.train_minutes is not None:
            raise ConfigError("data.train_minutes subsets the corpus's train split, which data.train_manifest "
                              "replaces: set one of them")


@dataclass(frozen=True)
class VocabSection:
    min_count: int = option("letters seen fewer times in the train text are left out of the vocabulary", 1)
    all_letters: bool = option("add every letter of the language even if train lacks it", False)


@dataclass(frozen=True)
class LmSection:
    enabled: bool = option("build an n-gram LM for beam search (stage 2) and use it in stage 5", True)
    order: int = option("n-gram order", 4)
    text_files: tuple[str, ...] = option("LM text (empty: the language's default text files)", ())
    include_train_text: bool = option("add the train transcripts to the LM text", True)
    prune: tuple[int, ...] = option("count-pruning thresholds per order, e.g. [0, 1, 1]", ())


@dataclass(frozen=True)
class BaselineSection:
    enabled: bool = option("score the source model before training: raw English head and zero-shot mapped head", True)
    lm: bool = option("with lm.enabled, also zero-shot + LM: the English head, the target LM and a lexicon spelling "
                      "each word in English letters", True)
    # Chosen on de-synth dev (docs/decoding.md): the English head's output needs a stronger LM than an adapted one.
    alphas: tuple[float, ...] = option("zero-shot + LM: LM weights tried on dev", (2.0, 3.0, 4.0))
    betas: tuple[float, ...] = option("zero-shot + LM: word bonuses tried on dev (the lowest dev CER wins among "
                                      "points no worse in WER than greedy)", (-1.0, 0.0, 1.0, 2.0))

    def __post_init__(self):
        if not self.alphas or not self.betas:
            raise ConfigError("baseline.alphas and baseline.betas need at least one value each")


@dataclass(frozen=True)
class ControlSection:
    enabled: bool = option("train the from-scratch control: same architecture randomly initialised, same data", True)
    steps: int | None = option("control optimiser steps (None: as many as the transfer run took)", None)
    lr: float = option("control peak learning rate (one stage, every group trains)", 5e-4)
    warmup_ratio: float = option("control warm-up share of its steps", 0.1)
    groups: tuple[str, ...] = option("groups the control trains (default: all of them)",
                                    ("feature_encoder", "feature_projection", "pos_conv", "layers", "head"))

    def __post_init__(self):
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"control.steps must be >= 1, got {self.steps}")


@dataclass(frozen=True)
class EvalSection:
    model: str = option("which adapted checkpoint to score: best (dev-selected) or final", "best")
    beam: bool = option("also decode with beam search (+ the stage-2 LM when lm.enabled)", True)
    beam_size: int = option("beam width", 50)
    lm_weight: float = option("LM weight alpha (overridden by tune_lm)", 1.0)
    word_score: float = option("word insertion bonus beta (overridden by tune_lm)", 1.0)
    tune_lm: bool = option("grid-search alpha/beta on dev before the test decode", False)
    alphas: tuple[float, ...] = option("tune_lm grid: LM weights", (0.5, 1.0, 2.0))
    betas: tuple[float, ...] = option("tune_lm grid: word bonuses", (0.0, 1.0, 2.0))
    max_utts: int | None = option("score at most this many test utterances (None: all)", None)
    device: str = option("auto, cpu or cuda (baseline and evaluation)", "auto")
    precision: str = option("fp32, bf16 or int8 for evaluation", "fp32")

    def __post_init__(self):
        one_of("eval.model", self.model, ("best", "final"))
        one_of("eval.precision", self.precision, PRECISIONS)


@dataclass(frozen=True)
class ExportSection:
    onnx: bool = option("stage 5: export the adapted model to ONNX (fp32 + int8, into its folder's onnx/, what "
                        "`transcribe` then runs on a CPU) and score the int8 model on test like the adapted one, so "
                        "the report shows what deployment costs", False)


@dataclass(frozen=True)
class SelfTrainSection:
    enabled: bool = option("stage 6: self-training on untranscribed target audio (pseudo-labels from the adapted "
                           "model + LM)", False)
    untranscribed_minutes: float = option("synth: minutes of untranscribed audio made in stage 0 by the train voices "
                                          "(dev/test voices stay held out); its transcripts are withheld", 40.0)
    untranscribed_manifest: str | None = option("untranscribed target audio (`prepare folder --no-text`); needed "
                                                "unless data.kind is synth", None)
    lm: bool = option("label with beam search + the stage-2 LM at stage 5's weights (with lm.enabled); else greedy",
                      True)
    confidence: str = option("ctc (per-label CTC likelihood of the label, in (0, 1]) or decoder (the decoder's "
                             "score per label)", "ctc")
    top_share: float = option("keep this most confident share of the labelled lines (1: all), unless "
                              "min_confidence is set", 0.5)
    min_confidence: float | None = option("keep the lines whose confidence is at least this instead (None: use "
                                          "top_share)", None)
    oversample: int = option("copies of each labelled utterance in the self-training data (the labelled part is "
                             "small and its labels are right)", 3)
    rounds: int = option("label-train rounds; each labels with the previous round's model", 1)

    def __post_init__(self):
        one_of("selftrain.confidence", self.confidence, ("ctc", "decoder"))
        if not self.untranscribed_minutes > 0:
            raise ConfigError(f"selftrain.untranscribed_minutes must be > 0, got {self.untranscribed_minutes}")
        if not 0 < self.top_share <= 1:
            raise ConfigError(f"selftrain.top_share must be in (0, 1], got {self.top_share}")
        if self.min_confidence is not None and not math.isfinite(self.min_confidence):
            raise ConfigError(f"selftrain.min_confidence must be finite, got {self.min_confidence}")
        if not 1 <= self.oversample <= 100:
            raise ConfigError(f"selftrain.oversample must be within 1-100, got {self.oversample}")
        if not 1 <= self.rounds <= 10:
            raise ConfigError(f"selftrain.rounds must be within 1-10, got {self.rounds}")


@dataclass(frozen=True)
class ReportSection:
    baseline: str | None = option("system the p-values compare against (raw, zero-shot + LM, ...; default: the "
                                  "best zero-shot system)", None)
    worst: int = option("worst utterances shown per system", 10)


@dataclass(frozen=True)
class RecipeConfig:
    """A recipe: the language, the source model and one table per pipeline stage."""

    description: str = option("one line saying what the recipe does", "")
    lang: str = option("target language (normaliser, base-letter map, default text)", "de")
    source: str = option("English source model: a local folder in HF form or a hub id", "models/en-synth-small")
    num_threads: int | None = option("torch CPU threads for every stage (None: torch's default, one per core); not "
                                    "part of any stage's hash", None)
    data: DataSection = option("stage 0: corpus", factory=DataSection)
    vocab: VocabSection = option("stage 2: character vocabulary", factory=VocabSection)
    lm: LmSection = option("stage 2: n-gram language model", factory=LmSection)
    baseline: BaselineSection = option("stage 3: source-only baselines", factory=BaselineSection)
    train: dict[str, Any] = option("stage 4: a TrainConfig table (model, data, augment, train, stages); the runner "
                                  "sets " + ", ".join(RUNNER_KEYS), factory=dict)
    control: ControlSection = option("stage 4: the from-scratch control", factory=ControlSection)
    eval: EvalSection = option("stage 5: evaluation on test", factory=EvalSection)
    export: ExportSection = option("stage 5: the adapted model for deployment", factory=ExportSection)
    selftrain: SelfTrainSection = option("stage 6: self-training on untranscribed audio", factory=SelfTrainSection)
    report: ReportSection = option("stage 7: report", factory=ReportSection)

    def __post_init__(self):
        if self.num_threads is not None and self.num_threads < 1:
            raise ConfigError(f"num_threads must be >= 1, got {self.num_threads}")
        if self.selftrain.enabled and self.data.kind != "synth" and not self.selftrain.untranscribed_manifest:
            raise ConfigError("selftrain.enabled needs selftrain.untranscribed_manifest (from `asr-transfer prepare "
                              "folder --no-text`) unless data.kind is synth")
        if self.lang not in LANGUAGES:
            raise ConfigError(f"lang must be one of {', '.join(LANGUAGES)}; got {self.lang!r}")
        for key in RUNNER_KEYS:
            section, name = key.split(".")
            if name in (self.train.get(section) or {}):
                instead = "data.train_manifest (a train split of your own)" if key == "data.train_manifest" \
                    else "lang/source"
                raise ConfigError(f"train.{key} is set by the recipe runner; set {instead} instead or leave it out")
        if "manifest" in ((self.train.get("train") or {}).get("mix") or {}):
            raise ConfigError("train.train.mix.manifest is set by the recipe runner; set data.source_train (or, for "
                              "synth, data.source_train_minutes) instead")
        if self.replays and not (self.data.source_train or (self.data.kind == "synth" and
                                                            self.data.source_train_minutes)):
            raise ConfigError("train.train.mix.share > 0 needs source-language speech to replay: set "
                              "data.source_train (a manifest) or, for synth, data.source_train_minutes")
        self.train_config("x.jsonl", "x.jsonl", "x.json", "run")  # unknown keys and bad values fail at load time

    @property
    def replays(self) -> bool:
        """The transfer run replays source-language speech (train.train.mix.share > 0)."""
        share = ((self.train.get("train") or {}).get("mix") or {}).get("share", 0)
        return isinstance(share, (int, float)) and share > 0

    def train_inputs(self, **changes) -> dict:
        """The resolved train table with its paths blank: what a stage's result depends on, not where it runs.

        Built with placeholders and blanked after, since a config with an empty output_dir or source is refused.
        """
        blank_source = changes.get("model.source") == ""
        if blank_source:
            changes = {**changes, "model.source": "-"}
        data = to_dict(self.train_config("", "", "", "-", **changes))
        data["train"]["output_dir"] = ""
        data["train"]["mix"]["manifest"] = ""  # the runner's path; its contents are stage 0's
        if blank_source:
            data["model"]["source"] = ""
        return data

    def train_config(self, train_manifest, dev_manifest, vocab, output_dir, **changes) -> TrainConfig:
        """The resolved :class:`TrainConfig` of the transfer run; ``changes`` are ``--set``-style ``key: value``."""
        data = json.loads(json.dumps(self.train))
        runner = {"model": {"source": self.source, "lang": self.lang, "vocab": str(vocab)},
                  "data": {"train_manifest": str(train_manifest), "dev_manifest": str(dev_manifest)},
                  "train": {"output_dir": str(output_dir)}}
        for section, values in runner.items():
            data.setdefault(section, {}).update(values)
        if self.replays:  # a stand-in until stage 4 sets the replay manifest (a change below)
            data["train"].setdefault("mix", {})["manifest"] = "-"
        for key, value in changes.items():
            node = data
            *parents, last = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = value
        try:
            return load_config(TrainConfig, base=data)
        except ConfigError as exc:
            raise ConfigError(f"in the recipe's train table: {exc}") from None


# ------------------------------------------------------------------------------------------------- loading
def list_recipes(recipes_dir: Path = RECIPES_DIR) -> list[str]:
    return sorted(p.parent.name for p in recipes_dir.glob("*/recipe.toml"))


def find_recipe(name_or_path: str | Path) -> Path:
    """``recipes/<name>/recipe.toml`` for a name; a recipe.toml path (or its folder) as given."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    if (path / "recipe.toml").is_file():
        return path / "recipe.toml"
    for base in (RECIPES_DIR, Path.cwd() / "recipes"):
        if (base / str(name_or_path) / "recipe.toml").is_file():
            return base / str(name_or_path) / "recipe.toml"
    known = ", ".join(list_recipes()) or "none found"
    raise UserError(f"no recipe {str(name_or_path)!r} (a name under {RECIPES_DIR} or a path to a recipe.toml; "
                    f"known: {known})")


def load_recipe(name_or_path: str | Path, overrides=()) -> tuple[str, RecipeConfig, Path]:
    """``(name, config, recipe.toml path)``: dataclass defaults ← defaults.toml ← recipe.toml ← ``overrides``."""
    path = find_recipe(name_or_path)
    defaults_path = path.parent.parent / "defaults.toml"
    if not defaults_path.is_file():
        defaults_path = RECIPES_DIR / "defaults.toml"
    base = read_config_data(defaults_path) if defaults_path.is_file() else {}
    return path.parent.name, load_config(RecipeConfig, path, overrides, base=base), path


# ------------------------------------------------------------------------------------------------- the runner
def resolve_source(source: str) -> str:
    """A local source folder as an absolute path (relative ones also tried against the checkout), else the hub id."""
    for candidate in (Path(source), RECIPES_DIR.parent / source):
        if candidate.is_dir():
            return str(candidate.resolve())
    return source


def check_source(source: str) -> None:
    """Fail before any stage runs when ``source`` names a local folder (its first part exists here) that is missing.

    Hub ids (``facebook/wav2vec2-base-960h``) pass; they are resolved from the Hugging Face cache when loaded.
    """
    bases = (Path.cwd(), RECIPES_DIR.parent)
    if any((base / source).is_dir() for base in bases):
        return
    first = Path(source).parts[0] if Path(source).parts else ""
    if Path(source).is_absolute() or source.startswith(".") or any((base / first).is_dir() for base in bases):
        hint = (" (the shipped English source: build it with `asr-transfer pretrain-source` or get it from the "
                "project's release)" if Path(source).name == "en-synth-small" else "")
        raise UserError(f"source model folder {source} not found{hint}; set another with --set source=DIR_OR_HUB_ID")


def _lookup(data: dict, key: str):
    for part in key.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


def config_digest(obj) -> str:
    """A short sha256 of JSON-able ``obj``: what a stage's done-marker compares."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


class RecipeRunner:
    """Runs stages ``start..stop`` of a recipe in ``out_dir`` with done-markers; see the module docstring."""

    def __init__(self, name: str, config: RecipeConfig, out_dir: str | Path, cv_root: str | Path | None = None,
                 force: bool = False, progress: bool = True, log: Callable[[str], None] = print):
        self.name, self.config, self.out = name, config, Path(out_dir)
        self.cv_root = str(Path(cv_root).resolve()) if cv_root else None
        self.force, self.progress, self.log = force, progress, log
        self.stages = {s.number: s for s in STAGES}
        self.source = resolve_source(config.source)  # what the stages load: an absolute folder, or the hub id
        self.data = to_dict(config)
        # The resolved nested TrainConfig is what stage 4 depends on (defaults filled in, so equal configs hash equal).
        self.data["train"] = config.train_inputs()
        self._fresh: dict[int, bool] = {}

    # ----------------------------------------------------------------- markers
    def marker_path(self, n: int) -> Path:
        return self.out / ".done" / f"stage-{n}.json"

    def marker(self, n: int) -> dict | None:
        try:
            record = json.loads(self.marker_path(n).read_text(encoding="utf-8"))
        except (OSError, *PARSE_ERRORS):
            return None
        # A marker of another stage under this number (a folder from before a stage was inserted) is no marker.
        return record if isinstance(record, dict) and record.get("name", self.stages[n].name) == self.stages[n].name \
            else None

    def stage_inputs(self, n: int) -> dict:
        """What stage ``n``'s outputs depend on: its config keys and the markers of the stages it reads."""
        spec = self.stages[n]
        keys = spec.keys + spec.keys_when(self.config)
        config = {k: _lookup(self.data, k) for k in keys}
        if "source" in keys:
            config["source_weights"] = self.source_digest()
        if "data" in keys:
            config["data"] = self._data_inputs(config["data"])
        if n == 0 and self.config.data.kind == "commonvoice":
            config["cv_root"] = self.cv_root or (self.marker(0) or {}).get("inputs", {}).get("config", {}).get(
                "cv_root"
            )
        deps = {str(d): [(self.marker(d) or {}).get("hash"), (self.marker(d) or {}).get("finished")] for d in spec.deps}
        return {"config": config, "deps": deps}

    def _data_inputs(self, data: dict) -> dict:
        """The data section as stage 0 depends on it: with data.train_manifest, that file's sha256 too (an edited
        manifest reruns the stages that read it); without, no train_manifest key at all, so that the markers of
        output folders made before the key existed still hold."""
        data = dict(data)
        given = data.pop("train_manifest", None)
        if given is not None:
            path = Path(given).expanduser()
            data["train_manifest"] = given
            data["train_manifest_sha256"] = sha256_files([path]).hexdigest()[:16] if path.is_file() else None
        return data

    @staticmethod
    def digest(obj) -> str:
        return config_digest(obj)

    def source_digest(self) -> str | None:
        """sha256 of a local source's weights and config (a retrained source reruns the stages that read it)."""
        if not hasattr(self, "_source_digest"):
            folder = Path(self.source)
            files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")) + [folder / "config.json"]
            digest = sha256_files(f for f in files if f.is_file())
            self._source_digest = digest.hexdigest()[:16] if folder.is_dir() else None
        return self._source_digest

    def is_fresh(self, n: int) -> bool:
        """Stage ``n`` ran with the current config and none of the stages it reads from ran again since."""
        if n not in self._fresh:
            m = self.marker(n)
            self._fresh[n] = bool(m) and m.get("hash") == config_digest(self.stage_inputs(n)) and all(
                self.is_fresh(d) for d in self.stages[n].deps)
        return self._fresh[n]

    def _why_stale(self, n: int) -> str:
        m = self.marker(n)
        if m is None:
            return "it has not run yet"
        old, new = m.get("inputs", {}), self.stage_inputs(n)
        changed = [k for k in new["config"] if old.get("config", {}).get(k) != new["config"][k]]
        if changed:
            return f"its config changed since it ran ({', '.join(changed)})"
        return "a stage it reads from ran again since"

    # ----------------------------------------------------------------- running
    def run(self, start: int = 0, stop: int | None = None) -> dict[int, str]:
        """Run stages ``start..stop``; returns ``{stage: "ran" | "skipped" | "disabled"}``."""
        last = max(self.stages)
        stop = last if stop is None else stop
        if not (0 <= start <= last and 0 <= stop <= last) or start > stop:
            raise UserError(
                f"--stage/--stop-stage must satisfy 0 <= stage <= stop-stage <= {last}; got {start}..{stop}"
            )
        selected = [self.stages[n] for n in range(start, stop + 1)]
        if any(spec.needs_source for spec in selected):
            check_source(self.config.source)
        if start == 0 and self.config.data.kind == "commonvoice" and not self.stage_inputs(0)["config"]["cv_root"]:
            raise UserError(f"recipe {self.name} imports Common Voice: pass --cv-root DIR (the cv-corpus-N folder or "
                            f"its {self.config.lang}/ folder with clips/ and train/dev/test.tsv)")
        if self.config.num_threads:
            import torch

            torch.set_num_threads(self.config.num_threads)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "recipe.resolved.json").write_text(
            json.dumps({"name": self.name, **self.data}, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        outcome: dict[int, str] = {}
        for n in range(start, stop + 1):
            outcome[n] = self._run_stage(self.stages[n])
        return outcome

    def _run_stage(self, spec: StageSpec) -> str:
        n, label = spec.number, f"stage {spec.number} ({spec.name})"
        for d in spec.deps:
            if not self.is_fresh(d):
                dep = self.stages[d]
                raise UserError(f"{label} needs stage {d} ({dep.name}), but {self._why_stale(d)}: "
                                f"rerun from --stage {d}")
        fresh = self.is_fresh(n)
        if fresh and not self.force:
            m = self.marker(n) or {}
            self.log(
                f"{label}: done ({m.get('wall_s', 0):.1f} s, {m.get('finished_at', '?')}); skipping (--force reruns)"
            )
            return "skipped"
        if self.marker(n) is not None and not fresh:
            self.log(f"{label}: {self._why_stale(n)}; rerunning")
        inputs = self.stage_inputs(n)
        digest = config_digest(inputs)
        self.marker_path(n).unlink(missing_ok=True)
        self._fresh = {}
        if not spec.enabled(self.config):
            self.log(f"{label}: disabled in the recipe")
            self._write_marker(n, spec, inputs, digest, 0.0, {"disabled": True})
            return "disabled"
        running = self.out / ".done" / f"stage-{n}.running.json"
        resume = (not self.force and read_json_or(running, {}).get("hash") == digest)
        if not resume:
            for name in spec.outputs:
                shutil.rmtree(self.out / name, ignore_errors=True)
        running.parent.mkdir(parents=True, exist_ok=True)
        running.write_text(json.dumps({"hash": digest}) + "\n", encoding="utf-8")
        self.log(f"{label}: running" + (" (continuing an interrupted run)" if resume else ""))
        t0 = time.perf_counter()
        result = spec.fn(self, resume=resume) or {}
        wall_s = time.perf_counter() - t0
        self._write_marker(n, spec, inputs, digest, wall_s, result)
        running.unlink(missing_ok=True)
        self._fresh = {}
        self.log(f"{label}: finished in {wall_s:.1f} s")
        return "ran"

    def _write_marker(self, n, spec, inputs, digest, wall_s, result) -> None:
        record = {"stage": n, "name": spec.name, "hash": digest, "inputs": inputs, "wall_s": round(wall_s, 2),
                  "finished": time.time(), "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "package_version": __version__, "result": result}
        atomic_write_json(self.marker_path(n), record, default=str)

    # ----------------------------------------------------------------- paths shared by the stages
    def path(self, *parts: str) -> Path:
        return self.out.joinpath(*parts)

    def manifest(self, split: str) -> Path:
        return self.out / "data" / f"{split}.jsonl"
