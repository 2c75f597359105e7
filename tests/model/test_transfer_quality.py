"""Transfer from the shipped English model to a 1.5-minute synthetic German corpus (issue: transfer training,
done-when).

- dev CER falls stage by stage (start → end of head stage → end of top stage);
- after the same number of head-only steps, the mapped head has lower dev loss and CER than a random head.
Needs ``models/en-synth-small`` (shipped in the repo) and espeak-ng.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "models" / "en-synth-small"
pytestmark = pytest.mark.skipif(
    not (SOURCE / "model.safetensors").is_file(), reason="models/en-synth-small not present"
)


@pytest.fixture(scope="module")
def german(tmp_path_factory):
    from asr_transfer.corpora.synth import prepare_synth

    out = tmp_path_factory.mktemp("de")
    paths = prepare_synth("de", out, minutes=1.5, seed=0, dev_minutes=0.4, test_minutes=0.2, jobs=2)
    return paths["train"], paths["dev"]


def _config(tmp: Path, train: Path, dev: Path, **over):
    from asr_transfer.config import TrainConfig, load_config

    base = {
        "model": {"source": str(SOURCE), "lang": "de"},
        "data": {"train_manifest": str(train), "dev_manifest": str(dev), "max_batch_s": 40.0},
        "train": {"output_dir": str(tmp / "run"), "eval_every": 1000, "save_every": 1000, "log_every": 5},
        "stages": [
            {"name": "head", "train": ["head"], "lr": 3e-3, "steps": 40, "warmup_steps": 4},
            {"name": "top", "train": ["head", "layers.-2:"], "lr": 5e-4, "steps": 40, "warmup_steps": 4},
        ],
    }
    return load_config(TrainConfig, None, [f"{k}={v}" for k, v in over.items()], base=base)


def _dev(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("split") == "dev"]


def test_dev_cer_falls_stage_by_stage(tmp_path, german):
    from asr_transfer.training.loop import train

    train(_config(tmp_path, *german), progress=False)
    dev = _dev(tmp_path / "run")
    start, after_head, after_top = dev[0], dev[1], dev[-1]
    assert start["step"] == 0 and after_head["step"] == 40 and after_top["step"] == 80
    assert start["cer"] > after_head["cer"] > after_top["cer"], [d["cer"] for d in dev]


def test_mapped_head_beats_random_head_after_the_same_head_steps(tmp_path, german):
    from asr_transfer.training.loop import train

    results = {}
    for mode in ("mapped", "random"):
        head_only = '[{name = "head", train = ["head"], lr = 3e-3, steps = 40, warmup_steps = 4}]'
        cfg = _config(tmp_path / mode, *german, **{"model.head_init": mode, "stages": head_only})
        train(cfg, progress=False)
        results[mode] = [d for d in _dev(tmp_path / mode / "run") if d["step"] == 40][0]
    assert results["mapped"]["loss"] < results["random"]["loss"]
    assert results["mapped"]["cer"] < results["random"]["cer"]
