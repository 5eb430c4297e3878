"""Training speed settings give the plain path's losses, gradients and detections.

``MODEL.KGDET.CHANNELS_LAST`` (channels-last weights and images) is compared with the default
contiguous layout on the same weights and batch; ``SOLVER.ADAMW_FUSED`` (torch's fused AdamW
kernel) with AdamW's per-parameter loop over several training steps.
"""

import copy
import torch

from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from builders import make_kgdet_input as make_input
from builders import tiny_kgdet_cfg as tiny_cfg
from kgdet.solver import build_optimizer


def _pair():
    torch.manual_seed(0)
    cfg = tiny_cfg(IN_FEATURES=["p4"], POS_NUM=9)
    plain = build_model(cfg)
    cfg.MODEL.KGDET.CHANNELS_LAST = True
    fast = build_model(cfg)
    fast.load_state_dict(plain.state_dict())
    return plain, fast


def _batch():
    torch.manual_seed(1)
    return [
        make_input(128, 160, [[10, 20, 90, 120], [60, 30, 150, 110]], [0, 2]),
        make_input(160, 128, [[5, 5, 100, 150]], [1]),
    ]


def test_channels_last_weights_and_images():
    _, fast = _pair()
    conv = fast.backbone.bottom_up.stem.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    images = fast.preprocess_image(_batch())
    assert images.tensor.is_contiguous(memory_format=torch.channels_last)


def test_channels_last_losses_and_gradients_equal_plain():
    """In float64 (so that float32 rounding, which the deep GN layers amplify to ~1e-2 relative
    in single gradients, does not hide a real difference) both layouts agree to 1e-8."""
    plain, fast = _pair()
    plain.double()
    fast.double()
    batch = _batch()
    for x in batch:
        x["image"] = x["image"].double()
    results = []
    for model in (plain, fast):
        model.train()
        with EventStorage():
            losses = model(copy.deepcopy(batch))
        sum(losses.values()).backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        results.append((losses, grads))
    (l0, g0), (l1, g1) = results
    assert l0.keys() == l1.keys()
    for key in l0:
        torch.testing.assert_close(l1[key], l0[key], rtol=1e-8, atol=1e-10, msg=key)
    assert g0.keys() == g1.keys() and len(g0) > 50
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-8, atol=1e-10, msg=name)


def test_channels_last_detections_equal_plain():
    plain, fast = _pair()
    for model in (plain, fast):
        model.eval()
        model.test_score_thresh = 0.0
    batch = [{"image": x["image"], "height": 128, "width": 160} for x in _batch()[:1]]
    with torch.no_grad():
        a = plain(batch)[0]["instances"]
        b = fast(batch)[0]["instances"]
    assert len(a) == len(b) > 0
    torch.testing.assert_close(b.scores, a.scores, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b.pred_boxes.tensor, a.pred_boxes.tensor, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(b.pred_keypoints, a.pred_keypoints, rtol=1e-4, atol=1e-3)
    assert torch.equal(b.pred_classes, a.pred_classes)


def _adamw_cfg(fused: bool):
    cfg = tiny_cfg(IN_FEATURES=["p4"], POS_NUM=9)
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    cfg.SOLVER.BASE_LR = 1e-3
    cfg.SOLVER.WEIGHT_DECAY = 0.05
    cfg.SOLVER.ADAMW_FUSED = fused
    return cfg


def test_fused_adamw_matches_the_loop_over_training_steps():
    """Three training steps (the model's losses, global gradient clipping, AdamW over
    Detectron2's parameter groups): the fused kernel and the per-parameter loop, given the same
    gradients, leave the same weights. (The gradients come from the loop's model and are copied
    to the fused one: with the weights' float rounding fed back through the network, Adam's
    normalised step would magnify the difference of near-zero gradients.)"""
    torch.manual_seed(0)
    models, optimizers = [], []
    for fused in (False, True):
        cfg = _adamw_cfg(fused)
        model = build_model(cfg)
        if models:
            model.load_state_dict(models[0].state_dict())
        optimizer = build_optimizer(cfg, model)
        assert all(g["fused"] is (True if fused else None) for g in optimizer.param_groups)
        models.append(model)
        optimizers.append(optimizer)
    loop_model, fused_model = models
    initial = {n: p.detach().clone() for n, p in loop_model.named_parameters()}
    batch = _batch()
    for _ in range(3):
        loop_model.train()
        with EventStorage():
            losses = loop_model(copy.deepcopy(batch))
        for optimizer in optimizers:
            optimizer.zero_grad()
        sum(losses.values()).backward()
        for p, q in zip(loop_model.parameters(), fused_model.parameters()):
            q.grad = None if p.grad is None else p.grad.clone()
        for optimizer in optimizers:
            optimizer.step()
    loop, fused = dict(loop_model.named_parameters()), dict(fused_model.named_parameters())
    for name, p in loop.items():
        torch.testing.assert_close(fused[name], p, rtol=1e-5, atol=1e-6, msg=name)
    # The steps moved the weights far beyond the tolerance (lr 1e-3, three steps).
    change = max((p - initial[n]).abs().max().item() for n, p in loop.items())
    assert change > 1e-3


def _clipped_adamw(fused: bool, model):
    from detectron2.config import get_cfg

    from kgdet import add_kgdet_config

    cfg = get_cfg()
    add_kgdet_config(cfg)
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    cfg.SOLVER.BASE_LR = 0.1
    cfg.SOLVER.WEIGHT_DECAY = 0.0
    cfg.SOLVER.ADAMW_FUSED = fused
    cfg.SOLVER.CLIP_GRADIENTS_FULL_MODEL_NORM = 1.0
    return build_optimizer(cfg, model)


def test_fused_adamw_under_grad_scaler_clips_the_true_gradient_norm():
    """SOLVER.AMP + SOLVER.ADAMW_FUSED: GradScaler hands the fused optimizer scaled gradients
    (unscaled inside its kernel), so the joint clipping must compare the scaled norm with
    max_norm times the scale. Two steps, one above and one below the clipping norm; the
    float32 loop without a scaler is the reference."""
    torch.manual_seed(0)
    models = [torch.nn.Linear(5, 3), torch.nn.Linear(5, 3)]
    models[1].load_state_dict(models[0].state_dict())
    reference, fused = (_clipped_adamw(f, m) for f, m in zip((False, True), models))
    assert fused.param_groups[0]["fused"] is True
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    x = torch.randn(8, 5)
    for loss_scale in (100.0, 0.01):  # joint gradient norm far above, then below 1.0
        reference.zero_grad()
        (models[0](x).square().sum() * loss_scale).backward()
        reference.step()
        fused.zero_grad()
        scaler.scale(models[1](x).square().sum() * loss_scale).backward()
        scaler.step(fused)
        scaler.update()
    for p, q in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)
