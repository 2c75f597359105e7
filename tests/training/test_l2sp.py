"""L2-SP: the penalty against hand-computed values, its gradient, its pull on trained weights, resume, config."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from train_fixtures import make_corpus, make_source_model, tiny_config

from asr_transfer.model.load import load_model
from asr_transfer.training.l2sp import L2SP


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    train, dev = make_corpus(d)
    return make_source_model(d / "src"), train, dev


def test_penalty_and_gradient_match_hand_computed_values(corpus):
    model = load_model(str(corpus[0])).model
    for p in model.parameters():
        p.requires_grad_(False)
    layer = model.wav2vec2.encoder.layers[-1].feed_forward.output_dense.weight  # a shared (source) weight
    frozen = model.wav2vec2.encoder.layers[0].feed_forward.output_dense.weight
    head, bias = model.lm_head.weight, model.lm_head.bias
    for p in (layer, head, bias):
        p.requires_grad_(True)
    l2 = L2SP(model, alpha=0.2, beta=0.05)
    with torch.no_grad():
        layer += 0.5  # 0.5 from its source value in every element
        frozen += 3.0  # frozen: not trained, so not counted
        head.fill_(0.1)
        bias.fill_(7.0)  # the head's bias is not penalised
    # alpha/2 * 0.5² * n_layer + beta/2 * 0.1² * n_head
    want = 0.2 / 2 * 0.25 * layer.numel() + 0.05 / 2 * 0.01 * head.numel()
    assert float(l2.penalty(model.named_parameters()).detach()) == pytest.approx(want, rel=1e-5)
    value = l2.add_gradients(model.named_parameters())
    assert float(value) == pytest.approx(want, rel=1e-5)
    torch.testing.assert_close(layer.grad, torch.full_like(layer, 0.2 * 0.5))
    torch.testing.assert_close(head.grad, torch.full_like(head, 0.05 * 0.1))
    assert bias.grad is None and frozen.grad is None
    # the gradient added is the autograd gradient of the penalty
    layer.grad = head.grad = None
    l2.penalty(model.named_parameters()).backward()
    auto = layer.grad.clone(), head.grad.clone()
    layer.grad = head.grad = None
    l2.add_gradients(model.named_parameters())
    torch.testing.assert_close(layer.grad, auto[0])
    torch.testing.assert_close(head.grad, auto[1])


def test_anchors_are_the_source_weights_on_the_model_device_and_leave_the_head_out(corpus):
    model = load_model(str(corpus[0])).model
    l2 = L2SP(model, alpha=1.0)
    assert not any(name.startswith("lm_head.") for name in l2.anchors)
    params = dict(model.named_parameters())
    assert set(l2.anchors) == {n for n in params if not n.startswith("lm_head.")}
    for name, anchor in l2.anchors.items():
        assert anchor.device == params[name].device
        assert anchor.data_ptr() != params[name].data_ptr()  # a copy, not the live weight
        torch.testing.assert_close(anchor, params[name].detach())


def _shared_distance(run_final, source) -> float:
    a, b = load_file(str(run_final / "model.safetensors")), load_file(str(source / "model.safetensors"))
    return sum(float((a[k] - b[k]).pow(2).sum()) for k in a if not k.startswith("lm_head.") and k in b)


def test_l2sp_keeps_trained_weights_nearer_the_source(tmp_path, corpus):
    from asr_transfer.training.loop import train

    distance = {}
    for alpha in ("0.0", "3.0"):
        train(tiny_config(tmp_path / alpha, *corpus, **{"train.l2sp.alpha": alpha}), progress=False)
        distance[alpha] = _shared_distance(tmp_path / alpha / "run" / "final", corpus[0])
    assert distance["0.0"] > 0
    assert distance["3.0"] < 0.5 * distance["0.0"], distance


def test_resumed_l2sp_run_pulls_toward_the_source_not_the_checkpoint(tmp_path, corpus):
    from asr_transfer.training.loop import train

    over = {"train.l2sp.alpha": "1.0", "train.l2sp.beta": "0.01"}
    train(tiny_config(tmp_path / "ref", *corpus, **over), progress=False)
    cfg = tiny_config(tmp_path / "int", *corpus, **over)
    train(cfg, progress=False, stop_after_steps=7)  # mid-stage 1: weights of layers.-1 already moved
    train(cfg, resume=True, progress=False)
    a = load_file(str(tmp_path / "ref" / "run" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "int" / "run" / "final" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.parametrize("setting, message", [
    ({"train.l2sp.alpha": "-1"}, "train.l2sp.alpha must be"),
    ({"train.l2sp.beta": "nan"}, "train.l2sp.beta must be"),
    ({"train.l2sp.alpha": "0.1", "model.from_scratch": "true"}, "from-scratch"),
    ({"train.l2sp.gamma": "1"}, "unknown config key train.l2sp.gamma"),
])
def test_bad_l2sp_settings_are_config_errors(tmp_path, corpus, setting, message):
    from asr_transfer.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        tiny_config(tmp_path, *corpus, **setting)
