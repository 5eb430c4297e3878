"""Training speed settings give the plain path's losses, gradients and detections.

``MODEL.KGDET.CHANNELS_LAST`` (channels-last weights and images) is compared with the default
contiguous layout on the same weights and batch.
"""

import copy
import torch

from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from test_meta_arch import make_input, tiny_cfg


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
