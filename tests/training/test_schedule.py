"""unfreeze.py: Stage parsing/validation, group patterns, trainable counts (config arithmetic), optimiser groups,
learning-rate schedule known values, schedule validation."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import TINY_CONFIG, TINY_STABLE_CONFIG, build_model

from asr_transfer.errors import ConfigError
from asr_transfer.model.groups import parameter_groups
from asr_transfer.training.schedule import (
    Stage,
    apply_stage,
    lr_multiplier,
    make_scheduler,
    optimizer_param_groups,
    resolve_groups,
    stage_total_steps,
    trainable_count,
    validate_schedule,
)


def expected_sizes(c) -> dict[str, int]:
    """Parameter counts per group from the config alone (not from the code under test)."""
    H, I, L, V = c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.vocab_size
    C, K, G = c.conv_dim[-1], c.num_conv_pos_embeddings, c.num_conv_pos_embedding_groups
    conv = 0
    in_channels = 1
    for dim, kernel in zip(c.conv_dim, c.conv_kernel):
        conv += dim * in_channels * kernel + (dim if c.conv_bias else 0)
        in_channels = dim
    conv += 2 * c.conv_dim[0] if c.feat_extract_norm == "group" else sum(2 * d for d in c.conv_dim)
    layer = 4 * (H * H + H) + 2 * H + (H * I + I) + (I * H + H) + 2 * H
    sizes = {
        "feature_encoder": conv,
        "feature_projection": 2 * C + C * H + H + H,  # LayerNorm, projection, masked_spec_embed
        "pos_conv": H + K + H * (H // G) * K,  # bias, weight-norm g (1,1,K), v (H, H/G, K)
        "encoder_norm": 2 * H,
        "head": H * V + V,
        "adapters": 0,
    }
    sizes.update({f"layers.{i}": layer for i in range(L)})
    return sizes


@pytest.fixture(params=["tiny", "stable", "base960h"])
def any_model(request, base960h_model):
    if request.param == "base960h":
        return base960h_model
    return build_model(TINY_STABLE_CONFIG if request.param == "stable" else TINY_CONFIG)


def test_group_sizes_match_config_arithmetic(any_model):
    sizes = expected_sizes(any_model.config)
    groups = parameter_groups(any_model)
    assert {g: sum(p.numel() for _, p in ps) for g, ps in groups.items()} == sizes
    assert sum(sizes.values()) == sum(p.numel() for p in any_model.parameters())


def test_base960h_totals_94_4m(base960h_model):
    assert sum(expected_sizes(base960h_model.config).values()) == 94_396_320


STAGES = [
    Stage("head", ("head",), lr=1e-3, steps=10),
    Stage("top", ("head", "layers.-1:"), lr=1e-4, until_plateau=True, max_steps=50),
    Stage("all", ("head", "layers", "feature_projection"), lr=3e-5, epochs=2.0),
    Stage("cnn", ("feature_encoder", "pos_conv"), lr=1e-5, steps=5),
    Stage("bottom", ("layers.0",), lr=1e-5, steps=5),
]


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_trainable_counts_per_stage(any_model, stage):
    c = any_model.config
    s, L = expected_sizes(c), c.num_hidden_layers
    layer, norm = s["layers.0"], s["encoder_norm"]
    expected = {
        "head": s["head"],
        # the top layer carries the encoder norm only in stable-layer-norm models (norm above the top layer)
        "top": s["head"] + layer + (norm if c.do_stable_layer_norm else 0),
        "all": s["head"] + L * layer + norm + s["feature_projection"],
        "cnn": s["feature_encoder"] + s["pos_conv"],
        # post-LN: the encoder norm sits below layer 0 and travels with it
        "bottom": layer + (0 if c.do_stable_layer_norm else norm),
    }[stage.name]
    assert trainable_count(any_model, stage) == expected
    assert apply_stage(any_model, stage) == expected
    assert sum(p.numel() for p in any_model.parameters() if p.requires_grad) == expected
    assert any_model.wav2vec2.feature_extractor._requires_grad is ("feature_encoder" in stage.train)


def test_apply_stage_sets_exact_groups(tiny_model):
    apply_stage(tiny_model, Stage("x", ("layers.1", "head"), lr=1.0, steps=1))
    trainable = {n for n, p in tiny_model.named_parameters() if p.requires_grad}
    groups = parameter_groups(tiny_model)
    assert trainable == {n for g in ("layers.1", "head") for n, _ in groups[g]}
    apply_stage(tiny_model, Stage("y", ("encoder_norm",), lr=1.0, steps=1))
    assert {n for n, p in tiny_model.named_parameters() if p.requires_grad} == {
        "wav2vec2.encoder.layer_norm.weight", "wav2vec2.encoder.layer_norm.bias"}


def test_adapters_stage_needs_adapters(tiny_model):
    stage = Stage("lora", ("adapters", "head"), lr=1e-3, steps=10)
    with pytest.raises(ConfigError, match="adapter"):
        apply_stage(tiny_model, stage)
    from asr_transfer.model.adapters import add_adapters

    add_adapters(tiny_model, "lora", r=2)
    H, L = tiny_model.config.hidden_size, tiny_model.config.num_hidden_layers
    assert apply_stage(tiny_model, stage) == L * 2 * (2 * 2 * H) + expected_sizes(tiny_model.config)["head"]


# ---------------------------------------------------------------- patterns


@pytest.mark.parametrize("patterns, stable, expected", [
    (["layers.-4:"], False, ["layers.8", "layers.9", "layers.10", "layers.11"]),
    (["layers.-4:"], True, ["encoder_norm", "layers.8", "layers.9", "layers.10", "layers.11"]),
    (["layers.0:2"], False, ["encoder_norm", "layers.0", "layers.1"]),
    (["layers.0:2"], True, ["layers.0", "layers.1"]),
    (["head", "layers.2", "layers.2:4"], False, ["layers.2", "layers.3", "head"]),
    (["layers.-1"], False, ["layers.11"]),
    (["layers.:"], False, ["encoder_norm", *(f"layers.{i}" for i in range(12))]),
    (["layers.:-10"], False, ["encoder_norm", "layers.0", "layers.1"]),
    (["adapters", "pos_conv", "feature_encoder"], False, ["feature_encoder", "pos_conv", "adapters"]),
])
def test_resolve_groups_python_slices(patterns, stable, expected):
    assert resolve_groups(12, patterns, stable_layer_norm=stable) == expected


def test_resolve_groups_from_model_and_group_dict(tiny_stable_model):
    assert resolve_groups(tiny_stable_model, ["layers.-1:"]) == ["encoder_norm", "layers.1"]
    groups = parameter_groups(tiny_stable_model)
    assert resolve_groups(groups, ["layers.-1:"]) == ["layers.1"]  # placement is not in a dict: post-LN default
    assert resolve_groups(groups, ["layers.-1:"], stable_layer_norm=True) == ["encoder_norm", "layers.1"]


@pytest.mark.parametrize("pattern, message", [
    ("encoder", "unknown group 'encoder'.*feature_projection.*layers.a:b"),
    ("layers.12", "out of range for 12 layers"),
    ("layers.-13", "out of range"),
    ("layers.0:13", "out of range"),
    ("layers.6:2", "selects no layers"),
    ("layers.x", "unknown group"),
])
def test_resolve_groups_errors(pattern, message):
    with pytest.raises(ConfigError, match=message):
        resolve_groups(12, [pattern])


# ---------------------------------------------------------------- Stage parsing


def test_stage_from_dict_roundtrip_and_coercions():
    stage = Stage.from_dict({"name": "top", "train": ["head", "layers.-4:"], "lr": 1, "until_plateau": True,
                             "max_steps": 100, "schedule": "cosine"})
    assert stage.train == ("head", "layers.-4:") and stage.lr == 1.0 and isinstance(stage.lr, float)
    assert Stage.from_dict(stage.to_dict()) == stage


@pytest.mark.parametrize("d, message", [
    ({"name": "a", "train": ["head"], "lr": 1e-3, "steps": 5, "stpes": 3}, "unknown key 'stpes'"),
    ({"name": "a", "train": ["head"], "lr": "1e-4", "steps": 5}, "lr must be a float.*1.0e-4"),
    ({"name": "a", "train": ["head"], "lr": 1e-3, "steps": 1.5}, "steps must be an int"),
    ({"name": "a", "train": ["head"], "lr": 1e-3, "steps": True}, "steps must be an int"),
    ({"name": "a", "train": "head", "lr": 1e-3, "steps": 5}, r'train must be a list.*\["head"\]'),
    ({"name": "a", "train": ["head"], "lr": 1e-3, "until_plateau": "yes"}, "until_plateau must be a bool"),
    ({"name": "a", "train": ["head"], "steps": 5}, "missing 'lr'"),
    ({"name": "a", "train": ["head"], "lr": 0.0, "steps": 5}, "lr must be > 0"),
    ({"name": "a", "train": ["head"], "lr": float("nan"), "steps": 5}, "lr must be > 0"),
    ({"name": "a", "train": [], "lr": 1e-3, "steps": 5}, "no groups"),
    ({"name": "a", "train": ["head"], "lr": 1e-3}, "no end"),
    ({"name": "a", "train": ["head"], "lr": 1e-3, "steps": 5, "epochs": 1.0}, "steps and epochs"),
    ({"name": "a", "train": ["head"], "lr": 1e-3, "steps": 5, "schedule": "step"}, "schedule must be one of"),
    ({"name": "a", "train": ["head"], "lr": 1e-3, "steps": 5, "layer_decay": 1.5}, "layer_decay"),
    ({"name": "a", "train": ["head"], "lr": 1e-3, "steps": 5, "warmup_steps": 6}, "warmup_steps.*exceeds"),
    ({"name": "a", "train": ["head"], "lr": 1e-3, "steps": 5, "warmup_ratio": 1.0}, "warmup_ratio"),
    ({"name": "a", "train": ["head"], "lr": 1e-3, "until_plateau": True, "patience": 0}, "patience"),
])
def test_stage_from_dict_rejects(d, message):
    with pytest.raises(ConfigError, match=message):
        Stage.from_dict(d)


def test_validate_schedule():
    ok = [Stage("head", ("head",), lr=1e-3, steps=10), Stage("top", ("layers.-2:",), lr=1e-4, until_plateau=True)]
    validate_schedule(ok, num_layers=12)
    with pytest.raises(ConfigError, match="no stages"):
        validate_schedule([], 12)
    with pytest.raises(ConfigError, match="duplicate stage name 'head'"):
        validate_schedule([ok[0], ok[0]], 12)
    with pytest.raises(ConfigError, match="until_plateau.*no dev set"):
        validate_schedule(ok, 12, has_eval=False)
    with pytest.raises(ConfigError, match="stage 'x'.*out of range for 2 layers"):
        validate_schedule([Stage("x", ("layers.-4:",), lr=1e-4, steps=1)], 2)
    with pytest.raises(ConfigError, match="stage 'x'.*unknown group 'top'"):
        validate_schedule([Stage("x", ("top",), lr=1e-4, steps=1)], 12)


# ---------------------------------------------------------------- optimiser groups and schedule


def test_optimizer_groups_layer_decay_and_no_decay(base960h_model):
    stage = Stage("all", ("head", "layers", "feature_projection", "pos_conv"), lr=1e-4, layer_decay=0.5,
                  weight_decay=0.01, epochs=1.0)
    groups = optimizer_param_groups(base960h_model, stage)
    by_group: dict[str, set[float]] = {}
    for g in groups:
        by_group.setdefault(g["group"], set()).add(g["lr"])
        assert len(g["names"]) == len(g["params"])
        for name, p in zip(g["names"], g["params"]):
            assert p is base960h_model.get_parameter(name)
            # the positional conv's weight-norm magnitude g ("original0") is a norm scale too
            is_bias_or_norm = name.endswith((".bias", ".original0")) or "norm" in name or p.ndim == 1
            assert g["weight_decay"] == (0.0 if is_bias_or_norm else 0.01), name
    lr = {k: v.pop() for k, v in by_group.items()}
    assert lr["head"] == 1e-4 and lr["layers.11"] == 1e-4
    assert math.isclose(lr["layers.0"], 1e-4 * 0.5 ** 11)
    assert math.isclose(lr["encoder_norm"], lr["layers.0"])  # post-LN: the norm below layer 0 shares its rate
    assert math.isclose(lr["feature_projection"], 1e-4 * 0.5**12) and math.isclose(
        lr["pos_conv"], lr["feature_projection"]
    )
    assert sum(p.numel() for g in groups for p in g["params"]) == trainable_count(base960h_model, stage)
    names = [n for g in groups for n in g["names"]]
    assert len(names) == len(set(names))


def test_optimizer_groups_drive_adamw(tiny_model, sine_wave):
    stage = Stage("top", ("head", "layers.-1:"), lr=1e-2, steps=3, layer_decay=0.8, weight_decay=0.1)
    apply_stage(tiny_model, stage)
    tiny_model.train()
    opt = torch.optim.AdamW(optimizer_param_groups(tiny_model, stage))
    frozen = tiny_model.wav2vec2.encoder.layers[0].attention.q_proj.weight.detach().clone()
    head = tiny_model.lm_head.weight.detach().clone()
    loss = tiny_model(torch.as_tensor(sine_wave)[None]).logits.pow(2).mean()
    loss.backward()
    opt.step()
    assert torch.equal(tiny_model.wav2vec2.encoder.layers[0].attention.q_proj.weight, frozen)
    assert not torch.equal(tiny_model.lm_head.weight, head)
    assert tiny_model.wav2vec2.feature_extractor.conv_layers[0].conv.weight.grad is None


def _lrs(stage: Stage, total: int | None, n: int) -> list[float]:
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=stage.lr)
    sched = make_scheduler(opt, stage, total)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_scheduler_known_values():
    linear = Stage("s", ("head",), lr=1.0, steps=10, warmup_steps=2)
    assert _lrs(linear, 10, 10) == pytest.approx([0.5, 1.0, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125])
    cosine = Stage("s", ("head",), lr=2.0, steps=10, warmup_steps=2, schedule="cosine")
    values = _lrs(cosine, 10, 10)
    assert values[:3] == pytest.approx([1.0, 2.0, 2.0]) and values[6] == pytest.approx(1.0)  # half-way: half the peak
    assert values[4] == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 0.25)))
    constant = Stage("s", ("head",), lr=1.0, steps=10, warmup_ratio=0.2, schedule="constant")
    assert _lrs(constant, 10, 4) == pytest.approx([0.5, 1.0, 1.0, 1.0])
    no_warmup = Stage("s", ("head",), lr=1.0, steps=4, warmup_ratio=0.0)
    assert _lrs(no_warmup, 4, 4) == pytest.approx([1.0, 0.75, 0.5, 0.25])


def test_scheduler_ratio_and_uncapped_plateau():
    stage = Stage("s", ("head",), lr=1.0, steps=100)  # warmup_ratio 0.1 → 10 warm-up steps
    assert lr_multiplier(0, 100, 10, "linear") == pytest.approx(0.1)
    assert _lrs(stage, 100, 11)[9:] == pytest.approx([1.0, 1.0])
    plateau = Stage("p", ("head",), lr=1.0, until_plateau=True, warmup_steps=4)
    assert _lrs(plateau, None, 6) == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    assert stage_total_steps(plateau) is None
    assert stage_total_steps(Stage("e", ("head",), lr=1.0, epochs=1.5), steps_per_epoch=7) == 11
    with pytest.raises(ConfigError, match="steps per epoch"):
        stage_total_steps(Stage("e", ("head",), lr=1.0, epochs=1.5))


def test_scheduler_scales_each_group_by_its_own_lr(tiny_model):
    stage = Stage("s", ("head", "layers"), lr=1e-3, layer_decay=0.5, steps=4, warmup_ratio=0.0)
    opt = torch.optim.AdamW(optimizer_param_groups(tiny_model, stage))
    peaks = [g["lr"] for g in opt.param_groups]
    sched = make_scheduler(opt, stage, 4)
    opt.step()
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([p * 0.75 for p in peaks])
