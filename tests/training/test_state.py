"""Stage-end rules, pure: plateau patience, run-wide best and early stopping, step budgets."""
from __future__ import annotations

from asr_transfer.training.schedule import Stage
from asr_transfer.training.state import State, end_stage, record_evaluation, stage_total_steps


def test_plateau_counts_evaluations_without_min_delta_improvement():
    stage = Stage(name="top", train=("head",), lr=1e-4, until_plateau=True, patience=2, min_delta=0.01)
    state = State()
    verdicts = [record_evaluation(state, m, stage, None) for m in (0.50, 0.45, 0.445, 0.442)]
    assert [v.new_best for v in verdicts] == [True, True, True, True]  # run-wide best has no min_delta
    assert [v.plateaued for v in verdicts] == [False, False, False, True]  # 0.445 and 0.442 improve < 0.01
    assert state.best == 0.442 and state.stage_best == 0.45


def test_early_stopping_is_run_wide():
    stage = Stage(name="all", train=("head",), lr=1e-4, steps=100)
    state = State()
    verdicts = [record_evaluation(state, m, stage, 2) for m in (0.3, 0.31, 0.32)]
    assert [v.stop_run for v in verdicts] == [False, False, True]
    assert not any(v.plateaued for v in verdicts)  # a step-budget stage never plateaus


def test_step_budgets_from_steps_epochs_and_plateau_cap():
    assert stage_total_steps(Stage(name="a", train=("head",), lr=1e-3, steps=7), 10, 1) == 7
    assert stage_total_steps(Stage(name="b", train=("head",), lr=1e-3, epochs=1.5), 10, 2) == 8  # ceil(1.5 * 5)
    assert stage_total_steps(Stage(name="c", train=("head",), lr=1e-3, until_plateau=True, max_steps=40), 10, 1) == 40


def test_end_stage_moves_to_the_next_and_finishes_after_the_last():
    state = State(stage=1, stage_step=5, step=12, epoch=2, batch=3, stages=[{"end_step": None}, {"end_step": None}])
    end_stage(state, num_stages=2)
    assert (state.stage, state.stage_step, state.epoch, state.batch, state.done) == (2, 0, 0, 0, True)
    assert state.stages[-1]["end_step"] == 12
