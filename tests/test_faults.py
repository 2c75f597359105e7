"""Faults: atomic checksummed checkpoints, SIGKILL at random moments, exact (or refused) resume, failing disks, NaN/inf.

Training processes are killed for real (SIGKILL). Each process would pay ~5-10 s of torch/transformers imports, so
they are forked from a *zygote*: one helper process that imports everything once (running no torch op, so forking is
safe) and then forks one child per training launch. A child is an ordinary separate process running
``asr-transfer train``; the test kills it with SIGKILL by pid.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_fixtures import make_corpus, make_source_model, tiny_config

ROOT = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------------------------------------ zygote
ZYGOTE = r"""
import json, os, signal, sys
import torch
# no torch op here (not even set_num_threads): OpenMP state must not exist before fork
import accelerate, transformers, torch.utils.tensorboard  # noqa: F401  (what a launch would import)
from accelerate import Accelerator  # noqa: F401
from torch.utils.tensorboard import SummaryWriter  # noqa: F401
from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC, Wav2Vec2Processor  # noqa
import transformers.masking_utils, safetensors.torch, soundfile, soxr, jiwer  # noqa: F401
import asr_transfer.training.loop, asr_transfer.model.transfer, asr_transfer.model.load  # noqa: F401
import asr_transfer.decode, asr_transfer.metrics  # noqa: F401
import asr_transfer.commands.train  # noqa: F401
from asr_transfer.cli import main


def install_kill_hooks(kill_at):
    # Exact positions an outside timer cannot hit: SIGKILL from inside the training process itself.
    T = asr_transfer.training.loop.Trainer
    if "micro" in kill_at:  # at the n-th training micro-batch of this launch (after the previous one's backward)
        calls, features = [0], T._features

        def hooked(self, examples, epoch, boundary, dev=False):
            if not dev:
                calls[0] += 1
                if calls[0] == kill_at["micro"]:
                    os.kill(os.getpid(), signal.SIGKILL)
            return features(self, examples, epoch, boundary, dev)
        T._features = hooked
    if "stage_change" in kill_at:  # as the next stage begins (right after the previous stage's end checkpoint)
        first, begin = [], T._begin_stage

        def hooked_begin(self, index):
            if first and index != first[0]:
                os.kill(os.getpid(), signal.SIGKILL)
            first.append(index)
            return begin(self, index)
        T._begin_stage = hooked_begin


print("ready", flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    pid = os.fork()
    if pid == 0:
        rc = 99
        try:
            os.environ.update(cmd.get("env", {}))
            fd = os.open(cmd["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            install_kill_hooks(cmd.get("kill_at") or {})
            rc = main(cmd["argv"])
        except BaseException:
            import traceback
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(rc)
    print(json.dumps({"pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"exit": os.waitstatus_to_exitcode(status)}), flush=True)
"""


class Zygote:
    """Launch ``asr-transfer`` commands as forked children of a pre-imported helper; kill them by pid."""

    def __init__(self, stderr_path: Path):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
        self.stderr_path = stderr_path
        with open(stderr_path, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=err, text=True, env=env, cwd=str(ROOT))
        assert self.proc.stdout.readline().strip() == "ready"

    def start(self, argv: list[str], log: Path, env: dict | None = None, kill_at: dict | None = None) -> int:
        cmd = {"argv": argv, "log": str(log), "env": env or {}, "kill_at": kill_at}
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())["pid"]

    def wait(self) -> int:
        """Exit code of the last child (negative: killed by that signal)."""
        return json.loads(self.proc.stdout.readline())["exit"]

    def run(self, argv, log, env=None, kill_at=None) -> int:
        self.start(argv, log, env, kill_at)
        return self.wait()

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def zygote(tmp_path_factory):
    z = Zygote(tmp_path_factory.mktemp("zygote") / "stderr.txt")
    yield z
    z.close()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("faults")
    train, dev = make_corpus(d, n_train=12, n_dev=2)
    return make_source_model(d / "src"), train, dev


def _config_file(tmp: Path, corpus, **over) -> Path:
    from asr_transfer.config import save_config

    settings = {"train.grad_accum": "2", "train.save_every": "2", "train.eval_every": "100", "train.keep_last": "2",
                "stages.0.steps": "8", "stages.1.steps": "12", "stages.2.epochs": "5", **over}
    cfg = tiny_config(tmp, *corpus, **settings)
    return save_config(cfg, tmp / "config.json")


def _records(run: Path, split: str = "train") -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r.get("split") == split]


def _max_step(run: Path) -> int:
    try:
        return max((r["step"] for r in _records(run)), default=0)
    except FileNotFoundError:
        return 0


def _wait_for(predicate, pid: int, timeout_s: float = 60.0) -> bool:
    """Poll ``predicate`` until true (True) or until the child ``pid`` is gone or time runs out (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        try:
            if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
                return False  # exited, not yet reaped by the zygote
        except OSError:
            return False
        time.sleep(0.005)
    return False


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:  # it finished first; the exit-code check below reports it
        pass


def _tmp_folders(ckpts: Path) -> set[str]:
    return {p.name for p in ckpts.glob(".step-*.tmp-*")} if ckpts.is_dir() else set()


def _assert_steps_continuous(steps: list[int], total: int) -> int:
    """Every step 1..total logged; a step repeats only where a relaunch replays from its checkpoint."""
    assert set(steps) == set(range(1, total + 1)), steps
    segments, prev_max = 1, 0
    for i, s in enumerate(steps):
        if i and s != steps[i - 1] + 1:  # a relaunch: it resumes from a checkpoint at or below what was reached
            segments += 1
            assert s <= prev_max + 1, steps
        prev_max = max(prev_max, s)
    return segments


def _assert_same_weights(a_dir: Path, b_dir: Path) -> None:
    a, b = load_file(str(a_dir / "model.safetensors")), load_file(str(b_dir / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


# ------------------------------------------------------------------------------------------------ SIGKILL
def test_sigkill_at_random_moments_then_resume_matches_uninterrupted(tmp_path, corpus, zygote):
    """12 SIGKILLs (10 at seeded random moments, 3 of them inside a checkpoint save; 1 mid-accumulation; 1 right at
    a stage boundary), each followed by ``--resume``: the run finishes with the uninterrupted run's weights."""
    from asr_transfer.training.checkpoint import list_checkpoints, load_checkpoint

    cfg = _config_file(tmp_path, corpus)
    base = ["train", str(cfg), "--no-progress"]
    ref = tmp_path / "ref"
    assert zygote.run(base + ["--set", f"train.output_dir={ref}"], tmp_path / "ref.log") == 0, (
        tmp_path / "ref.log"
    ).read_text()
    total = max(r["step"] for r in _records(ref))

    run = tmp_path / "int"
    ckpts = run / "checkpoints"
    argv = base + ["--resume", "--set", f"train.output_dir={run}"]
    rng = random.Random(20240611)
    plan = ["step"] * 7 + ["save"] * 3
    rng.shuffle(plan)
    plan.insert(rng.randrange(0, 3), "stage_change")  # early, while a later stage is still to come
    plan.insert(rng.randrange(0, len(plan) + 1), "micro")
    kills, save_kills = [], 0
    for i, kind in enumerate(plan):
        log = tmp_path / f"launch{i}.log"
        before_tmp = _tmp_folders(ckpts)
        reached = _max_step(run)
        if kind == "micro":
            pid = zygote.start(argv, log, kill_at={"micro": 2})  # grad_accum=2: one micro-batch done, one to go
        elif kind == "stage_change":
            pid = zygote.start(argv, log, kill_at={"stage_change": True})
        elif kind == "save":
            pid = zygote.start(argv, log, env={"ASR_TRANSFER_CHECKPOINT_DELAY_S": "0.08"})  # 8 files: >= 0.64 s
            saving = lambda: bool(_tmp_folders(ckpts) - before_tmp)  # noqa: E731
            assert _wait_for(saving, pid), f"launch {i}: no checkpoint save started\n{log.read_text()}"
            time.sleep(rng.uniform(0.0, 0.45))
            _kill(pid)
        else:
            target = min(reached + rng.randint(1, 2), total - 2)  # never let the run finish before the kill
            assert target > reached, kills
            pid = zygote.start(argv, log)
            assert _wait_for(lambda: _max_step(run) >= target, pid), f"launch {i}: no step {target}\n{log.read_text()}"
            time.sleep(rng.uniform(0.0, 0.04))  # somewhere in the next step, its logging or its checkpoint
            _kill(pid)
        code = zygote.wait()
        assert code == -signal.SIGKILL, f"launch {i} ({kind}) ended with {code}\n{log.read_text()}"
        leftover = _tmp_folders(ckpts) - before_tmp
        save_kills += kind == "save" and bool(leftover)
        kills.append((kind, reached, _max_step(run), sorted(leftover)))
        assert "Traceback" not in log.read_text()
    print("kills (kind, step reached before, after, temp folders left):", *kills, sep="\n  ")
    assert len(kills) == 12 and save_kills >= 2, kills
    assert zygote.run(argv, tmp_path / "final.log") == 0, (tmp_path / "final.log").read_text()

    steps = [r["step"] for r in _records(run)]
    assert _assert_steps_continuous(steps, total) <= len(plan) + 1
    assert not _tmp_folders(ckpts), "stale temp folders are pruned"
    for path in list_checkpoints(ckpts):
        load_checkpoint(path)  # verifies checksums
    _assert_same_weights(ref / "final", run / "final")
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["steps"] == total


# ------------------------------------------------------------------------------------------------ checkpoints
def _tiny_training_state(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 3)
    names = [n for n, _ in model.named_parameters()]
    opt = torch.optim.AdamW([{"params": list(model.parameters()), "names": names}], lr=1e-2)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return model, opt, sched


def _save(root: Path, step: int, seed: int = 0) -> Path:
    import numpy as np

    from asr_transfer.training.checkpoint import save_checkpoint

    model, opt, sched = _tiny_training_state(seed)
    return save_checkpoint(root, step, model.state_dict(), opt, sched, {"step": step},
                           np_rng=np.random.default_rng(seed))


def test_checkpoint_with_one_corrupted_byte_is_never_loaded(tmp_path):
    from asr_transfer.training.checkpoint import CheckpointError, latest_valid, load_checkpoint, verify

    older = _save(tmp_path, 2, seed=1)
    newer = _save(tmp_path, 4, seed=2)
    assert verify(newer) and not list(tmp_path.glob(".step-*"))
    for name in ("model.safetensors", "optimizer.safetensors", "rng.json", "trainer.json"):
        path = newer / name
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01  # one bit of one byte
        path.write_bytes(bytes(data))
        with pytest.raises(CheckpointError, match="checksums"):
            load_checkpoint(newer)
        warnings = []
        assert latest_valid(tmp_path, log=warnings.append) == older
        assert len(warnings) == 1 and "step-4" in warnings[0]
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
        assert latest_valid(tmp_path, log=warnings.append) == newer
    (newer / "checksums.json").unlink()  # a save killed before its last file: partial
    assert latest_valid(tmp_path, log=lambda *_: None) == older
    assert load_checkpoint(older)["trainer"] == {"step": 2}


def test_leftover_temp_folder_is_ignored_and_pruned(tmp_path):
    from asr_transfer.training.checkpoint import latest_valid, list_checkpoints, prune

    good = _save(tmp_path, 2)
    stale = tmp_path / ".step-4.tmp-99999"  # what a save killed half-way leaves
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half a file")
    assert list_checkpoints(tmp_path) == [good]
    assert latest_valid(tmp_path) == good
    _save(tmp_path, 4)
    prune(tmp_path, keep_last=2)
    assert not stale.exists()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-2", "step-4"]


def test_failed_save_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    from asr_transfer.training.checkpoint import latest_valid, load_checkpoint

    first = _save(tmp_path, 2)
    for after in range(8):  # fail before each of the 8 files in turn
        monkeypatch.setenv("ASR_TRANSFER_FAIL_CHECKPOINT_AFTER", str(after))
        with pytest.raises(OSError, match="injected"):
            _save(tmp_path, 4)
        assert not (tmp_path / "step-4").exists() and not list(tmp_path.glob(".step-*"))
        assert latest_valid(tmp_path) == first
        load_checkpoint(first)


# ------------------------------------------------------------------------------------------------ training faults
def test_resume_is_exact_after_a_kill_mid_accumulation_and_at_a_stage_boundary(tmp_path, corpus, zygote):
    """Deterministic positions (the random-kill test hits them only by chance): SIGKILL right after the first
    micro-batch of an optimiser step (grad_accum=2), and as the second stage begins."""
    cfg = _config_file(tmp_path, corpus, **{"stages.0.steps": "3", "stages.1.steps": "3", "stages.2.epochs": "1",
                                            "train.save_every": "100"})
    base = ["train", str(cfg), "--no-progress"]
    ref, run = tmp_path / "ref", tmp_path / "int"
    assert zygote.run(base + ["--set", f"train.output_dir={ref}"], tmp_path / "ref.log") == 0
    argv = base + ["--resume", "--set", f"train.output_dir={run}"]
    # save_every=100: checkpoints only at stage ends, so the first kill replays the whole first stage.
    assert zygote.run(argv, tmp_path / "a.log", kill_at={"micro": 4}) == -signal.SIGKILL  # inside step 2
    assert _max_step(run) == 1
    assert zygote.run(argv, tmp_path / "b.log", kill_at={"stage_change": True}) == -signal.SIGKILL
    assert _max_step(run) == 3 and (run / "checkpoints" / "step-3").is_dir()
    assert zygote.run(argv, tmp_path / "c.log", kill_at={"micro": 2}) == -signal.SIGKILL  # 2nd stage, mid-step 4
    assert zygote.run(argv, tmp_path / "d.log") == 0, (tmp_path / "d.log").read_text()
    assert "resuming from step-3" in (tmp_path / "d.log").read_text()
    _assert_same_weights(ref / "final", run / "final")
    _assert_steps_continuous([r["step"] for r in _records(run)], max(r["step"] for r in _records(ref)))


@pytest.fixture
def paused_run(tmp_path, corpus):
    """A run paused after 4 optimiser steps (checkpoints step-2 and step-4), trained in-process."""
    from asr_transfer.training.loop import train

    cfg = tiny_config(tmp_path, *corpus, **{"train.save_every": "2", "train.eval_every": "100"})
    train(cfg, progress=False, stop_after_steps=4)
    return cfg


def _rewrite_checksums(ckpt: Path) -> None:
    import hashlib

    sums = json.loads((ckpt / "checksums.json").read_text())
    for name in sums:
        sums[name] = hashlib.sha256((ckpt / name).read_bytes()).hexdigest()
    (ckpt / "checksums.json").write_text(json.dumps(sums))


def test_resume_with_changed_config_is_refused_with_one_line(tmp_path, corpus, paused_run, capsys):
    from asr_transfer.cli import main
    from asr_transfer.config import save_config

    cfg_file = save_config(paused_run, tmp_path / "cfg.json")
    rc = main(["train", str(cfg_file), "--resume", "--no-progress", "--set", "stages.0.lr=0.005"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err.count("\n") == 0 and "Traceback" not in err
    assert "config changed" in err and "--allow-inexact-resume" in err and "step-4" in err
    # Settings that cannot change the result (logging, checkpoint cadence) do not block a resume.
    assert main(["train", str(cfg_file), "--resume", "--no-progress", "--stop-after-steps", "1",
                 "--set", "train.log_every=5"]) == 0
    assert (
        main(
            [
                "train",
                str(cfg_file),
                "--resume",
                "--no-progress",
                "--allow-inexact-resume",
                "--stop-after-steps",
                "1",
                "--set",
                "stages.0.lr=0.005",
            ]
        )
        == 0
    )


def test_resume_with_edited_manifest_is_refused(tmp_path, paused_run):
    from asr_transfer.errors import UserError
    from asr_transfer.training.loop import train

    manifest = Path(paused_run.data.train_manifest)
    original = manifest.read_text()
    lines = original.splitlines()
    lines[0] = lines[0].replace("über den fluss", "über den rhein")
    manifest.write_text("\n".join(lines) + "\n")
    try:
        with pytest.raises(UserError, match="train manifest changed"):
            train(paused_run, resume=True, progress=False)
        train(paused_run, resume=True, allow_inexact_resume=True, progress=False, stop_after_steps=1)
    finally:
        manifest.write_text(original)


def test_missing_rng_state(tmp_path, paused_run):
    """Tampering breaks the checksum, so the previous checkpoint is used (exactly); a checkpoint that honestly lacks
    the generator state (consistent checksums, e.g. from an older writer) is refused unless allowed."""
    from asr_transfer.errors import UserError
    from asr_transfer.training.loop import train

    ckpts = Path(paused_run.train.output_dir) / "checkpoints"
    rng_file = ckpts / "step-4" / "rng.json"
    meta = json.loads(rng_file.read_text())
    assert meta["generator"] is not None
    meta["generator"] = None
    rng_file.write_text(json.dumps(meta))
    messages = []
    import asr_transfer.training.loop as train_module

    trainer = train_module.Trainer(paused_run, resume=True, progress=False, stop_after_steps=0)
    trainer._say = messages.append
    trainer._setup()
    assert trainer.state.step == 2 and any("step-4" in m and "checksum" in m for m in messages)
    trainer.log.close()

    _rewrite_checksums(ckpts / "step-4")
    with pytest.raises(UserError, match="RNG state missing"):
        train(paused_run, resume=True, progress=False)
    train(paused_run, resume=True, allow_inexact_resume=True, progress=False, stop_after_steps=1)


def test_failing_checkpoint_write_is_reported_and_training_continues(tmp_path, paused_run, monkeypatch, capsys):
    from asr_transfer.training.checkpoint import latest_valid, list_checkpoints, load_checkpoint
    from asr_transfer.training.loop import train

    ckpts = Path(paused_run.train.output_dir) / "checkpoints"
    before = {p.name: (p / "model.safetensors").read_bytes() for p in list_checkpoints(ckpts)}
    monkeypatch.setenv("ASR_TRANSFER_FAIL_CHECKPOINT_AFTER", "3")  # every later save dies after 3 of its files
    final = train(paused_run, resume=True, progress=False)
    out = capsys.readouterr().out
    assert final.name == "final" and (final / "model.safetensors").is_file()
    warnings = [line for line in out.splitlines() if line.startswith("warning: checkpoint at step")]
    assert warnings and all("previous checkpoints are intact" in w for w in warnings)
    events = _records(Path(paused_run.train.output_dir), "event")
    assert len([e for e in events if e.get("checkpoint_failed")]) == len(warnings)
    after = {p.name: (p / "model.safetensors").read_bytes() for p in list_checkpoints(ckpts)}
    assert after == before and latest_valid(ckpts).name == "step-4"
    load_checkpoint(ckpts / "step-4")
    assert not list(ckpts.glob(".step-*"))


def test_inf_and_nan_losses_mid_accumulation_are_skipped(tmp_path, corpus, monkeypatch):
    """Every 3rd micro-batch's loss is inf (or NaN) with grad_accum=2, so bad micro-batches fall on both the first
    and the second half of optimiser steps; those steps are skipped and counted and the weights stay finite.
    (tests/training/test_loop.py covers plain NaN injection with grad_accum=1.)"""
    import asr_transfer.training.heads as heads_module  # the training loss (training/heads.py)
    import asr_transfer.training.loop as train_module

    real = heads_module.ctc_loss_per_utt
    calls = [0]

    def poisoned(*args, **kwargs):
        loss = real(*args, **kwargs)
        if torch.is_grad_enabled():  # training micro-batches only, not dev evaluation
            calls[0] += 1
            if calls[0] % 3 == 0:
                return loss * (float("inf") if calls[0] % 2 else float("nan"))
        return loss

    monkeypatch.setattr(heads_module, "ctc_loss_per_utt", poisoned)
    cfg = tiny_config(tmp_path, *corpus, **{"train.grad_accum": "2", "train.eval_every": "100", "stages.2.epochs": "2"})
    final = train_module.train(cfg, progress=False)
    run = Path(cfg.train.output_dir)
    summary = json.loads((run / "train_summary.json").read_text())
    # Micro-batches pair up as (1,2) (3,4) (5,6) ...: 3 poisons the 2nd step's first half, 6 the 3rd step's second.
    good_steps, skipped = summary["steps"], summary["nan_skipped"]
    pairs = good_steps + skipped
    assert calls[0] == 2 * pairs  # every micro-batch belongs to exactly one (kept or skipped) optimiser step
    assert skipped == sum((2 * k - 1) % 3 == 0 or (2 * k) % 3 == 0 for k in range(1, pairs + 1)) > 0
    events = _records(run, "event")
    assert [e["nan_skipped"] for e in events if "nan_skipped" in e] == list(range(1, summary["nan_skipped"] + 1))
    losses = [r["loss"] for r in _records(run)]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    _assert_steps_continuous([r["step"] for r in _records(run)], good_steps)
    assert all(torch.isfinite(t).all() for t in load_file(str(final / "model.safetensors")).values())


def test_resume_after_the_last_checkpoint_but_before_final_is_written(tmp_path, corpus):
    """A kill between the run's last checkpoint and final/: resuming only evaluates and writes final/."""
    import shutil

    from asr_transfer.training.loop import train

    cfg = tiny_config(tmp_path, *corpus, **{"stages.0.steps": "1", "stages.1.steps": "1", "stages.2.epochs": "1",
                                            "train.eval_every": "100"})
    final = train(cfg, progress=False)
    reference = load_file(str(final / "model.safetensors"))
    shutil.rmtree(final)
    (final.parent / "train_summary.json").unlink()
    again = train(cfg, resume=True, progress=False)
    assert again == final and (final.parent / "train_summary.json").is_file()
    restored = load_file(str(final / "model.safetensors"))
    assert all(torch.equal(reference[k], restored[k]) for k in reference)
