"""Image-level flip TTA for KGDet.

Inputs have a width that is a multiple of the largest stride (no padding), so mirror
consistency is exact: TTA on the mirrored image equals the mirrored TTA result.
"""

import numpy as np
from pathlib import Path
import pytest
import torch
from torch import nn

from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

import kgdet
from kgdet.tta import KGDetWithTTA, fuse_detections, unflip_keypoint_slots

REPO_ROOT = Path(__file__).resolve().parents[2]
# A 4-slot toy layout: 0/1 = top-left/top-right corner, 2/3 = bottom-left/bottom-right.
TOY_FLIP = [1, 0, 3, 2]


class BrightRectangleDetector(nn.Module):
    """A flip-equivariant oracle: one detection around the pixels > 128 of channel 0, with
    the rectangle's corners as keypoints (in the frame of the input's height/width)."""

    def forward(self, batched_inputs):
        outs = []
        for inp in batched_inputs:
            img = inp["image"]
            h, w = img.shape[1:]
            ys, xs = torch.nonzero(img[0] > 128, as_tuple=True)
            x1, y1, x2, y2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
            sx, sy = inp["width"] / w, inp["height"] / h
            box = torch.tensor([[x1 * sx, y1 * sy, x2 * sx, y2 * sy]], dtype=torch.float32)
            b = box[0]
            kps = torch.tensor(
                [[[b[0], b[1], 0.9], [b[2], b[1], 0.9], [b[0], b[3], 0.9], [b[2], b[3], 0.9]]]
            )
            inst = Instances((inp["height"], inp["width"]))
            inst.pred_boxes = Boxes(box)
            inst.scores = torch.tensor([0.9])
            inst.pred_classes = torch.tensor([0])
            inst.pred_keypoints = kps
            outs.append({"instances": inst})
        return outs


def _toy_cfg(min_sizes, max_size):
    cfg = get_cfg()
    kgdet.add_kgdet_config(cfg)
    cfg.TEST.AUG.MIN_SIZES = min_sizes
    cfg.TEST.AUG.MAX_SIZE = max_size
    cfg.TEST.AUG.FLIP = True
    return cfg


def _toy_image():
    img = torch.zeros(3, 64, 96, dtype=torch.uint8)
    img[:, 10:30, 5:41] = 255  # an asymmetric rectangle: x in [5, 41), y in [10, 30)
    return img


@pytest.mark.parametrize("fusion", ["nms", "mean"])
def test_flipped_copy_maps_back_exactly(fusion):
    img = _toy_image()
    inp = {"image": img, "height": 64, "width": 96}
    plain = BrightRectangleDetector()([dict(inp)])[0]["instances"]
    tta = KGDetWithTTA(
        _toy_cfg((64,), 1000),
        BrightRectangleDetector(),
        fusion=fusion,
        keypoint_flip_indices=TOY_FLIP,
    )
    fused = tta([dict(inp)])[0]["instances"]
    assert len(fused) == 1
    torch.testing.assert_close(fused.pred_boxes.tensor, plain.pred_boxes.tensor)
    torch.testing.assert_close(fused.pred_keypoints, plain.pred_keypoints)
    torch.testing.assert_close(fused.scores, plain.scores)


def test_multi_scale_copies_map_back():
    img = _toy_image()
    tta = KGDetWithTTA(
        _toy_cfg((64, 96), 1000),
        BrightRectangleDetector(),
        fusion="mean",
        keypoint_flip_indices=TOY_FLIP,
    )
    fused = tta([{"image": img, "height": 64, "width": 96}])[0]["instances"]
    # Four copies (2 scales x flip) agree within the resize's sub-pixel blur.
    np.testing.assert_allclose(fused.pred_boxes.tensor[0].numpy(), [5, 10, 41, 30], atol=1.0)
    np.testing.assert_allclose(
        fused.pred_keypoints[0, :, :2].numpy(), [[5, 10], [41, 10], [5, 30], [41, 30]], atol=1.0
    )


def test_unflip_and_fusion_helpers():
    kps = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    out = unflip_keypoint_slots(kps, TOY_FLIP)
    torch.testing.assert_close(out[:, 0], kps[:, 1])
    torch.testing.assert_close(out[:, 3], kps[:, 2])
    a = Instances((10, 10), pred_boxes=Boxes(torch.tensor([[0.0, 0, 4, 4]])))
    a.scores, a.pred_classes = torch.tensor([0.8]), torch.tensor([1])
    b = Instances((10, 10), pred_boxes=Boxes(torch.tensor([[0.0, 0, 4, 6], [5.0, 5, 9, 9]])))
    b.scores, b.pred_classes = torch.tensor([0.4, 0.3]), torch.tensor([1, 1])
    nms = fuse_detections([a, b], (10, 10), 0.5, 100, "nms")
    assert nms.scores.tolist() == pytest.approx([0.8, 0.3])
    mean = fuse_detections([a, b], (10, 10), 0.5, 100, "mean")
    # The overlapping pair: score-weighted box, score averaged over the 2 copies.
    torch.testing.assert_close(mean.pred_boxes.tensor[0], torch.tensor([0.0, 0, 4, 14 / 3]))
    assert mean.scores.tolist() == pytest.approx([0.6, 0.15])
    empty = Instances((10, 10), pred_boxes=Boxes(torch.zeros(0, 4)))
    empty.scores, empty.pred_classes = torch.zeros(0), torch.zeros(0, dtype=torch.int64)
    assert len(fuse_detections([empty, empty], (10, 10), 0.5, 100, "mean")) == 0


class CachedModel(nn.Module):
    """Runs the wrapped model once per distinct image (both fusions see the same passes)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.cache = model, {}

    def forward(self, batched_inputs):
        outs = []
        for inp in batched_inputs:
            key = (inp["image"].numpy().tobytes(), inp["height"], inp["width"])
            if key not in self.cache:
                with torch.no_grad():
                    self.cache[key] = self.model([inp])[0]["instances"]
            outs.append({"instances": self.cache[key]})
        return outs


@pytest.fixture(scope="module")
def synth_model():
    cfg = get_cfg()
    kgdet.add_kgdet_config(cfg)
    cfg.merge_from_file(str(REPO_ROOT / "configs" / "kgdet_synth.yaml"))
    cfg.MODEL.WEIGHTS, cfg.MODEL.DEVICE = "", "cpu"
    cfg.MODEL.KGDET.SCORE_THRESH_TEST = 0.0
    cfg.TEST.AUG.MIN_SIZES, cfg.TEST.AUG.MAX_SIZE, cfg.TEST.AUG.FLIP = (64,), 96, True
    torch.manual_seed(0)
    return cfg, CachedModel(build_model(cfg).eval())


@pytest.mark.parametrize("fusion", ["nms", "mean"])
def test_kgdet_mirror_consistency(synth_model, fusion):
    """Untrained KGDet (synthetic config): TTA(mirror(I)) == mirror(TTA(I))."""
    cfg, model = synth_model
    tta = KGDetWithTTA(cfg, model, fusion=fusion)
    img = torch.randint(
        0, 256, (3, 64, 96), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    a = tta([{"image": img, "height": 64, "width": 96}])[0]["instances"]
    b = tta([{"image": img.flip(-1), "height": 64, "width": 96}])[0]["instances"]
    assert len(a) == len(b) > 0
    names = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).keypoint_names
    pairs = dict(MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).keypoint_flip_map)
    pairs.update({v: k for k, v in pairs.items()})
    flip = [names.index(pairs.get(n, n)) for n in names]
    mirrored_boxes = b.pred_boxes.tensor.clone()
    mirrored_boxes[:, [0, 2]] = 96 - b.pred_boxes.tensor[:, [2, 0]]
    mirrored_kps = b.pred_keypoints[:, flip].clone()
    mirrored_kps[:, :, 0] = 96 - mirrored_kps[:, :, 0]
    ia, ib = torch.argsort(a.scores, descending=True), torch.argsort(b.scores, descending=True)
    torch.testing.assert_close(a.scores[ia], b.scores[ib])
    assert torch.equal(a.pred_classes[ia], b.pred_classes[ib])
    torch.testing.assert_close(a.pred_boxes.tensor[ia], mirrored_boxes[ib], atol=1e-4, rtol=0)
    torch.testing.assert_close(a.pred_keypoints[ia], mirrored_kps[ib], atol=1e-4, rtol=0)


def _mean_fusion_loop(per_copy, image_size, nms_thresh, max_detections):
    """The per-detection loop the "mean" fusion is written without (reference)."""
    from detectron2.layers import batched_nms
    from detectron2.structures import pairwise_iou

    num_copies = len(per_copy)
    copy_ids = torch.cat([torch.full((len(x),), i) for i, x in enumerate(per_copy)])
    merged = Instances.cat(per_copy)
    boxes = merged.pred_boxes.tensor
    keep = batched_nms(boxes, merged.scores, merged.pred_classes, nms_thresh)[:max_detections]
    iou = pairwise_iou(Boxes(boxes[keep]), Boxes(boxes))
    same_class = merged.pred_classes[keep][:, None] == merged.pred_classes[None, :]
    iou = torch.where(same_class & (iou >= nms_thresh), iou, torch.full_like(iou, -1.0))
    out_boxes, out_scores, out_kps = [], [], []
    for m, anchor in enumerate(keep.tolist()):
        members = [anchor]
        for c in range(num_copies):
            if c == int(copy_ids[anchor]):
                continue
            cand = torch.where(copy_ids == c, iou[m], torch.full_like(iou[m], -1.0))
            best = int(cand.argmax())
            if cand[best] >= 0:
                members.append(best)
        idx = torch.as_tensor(members)
        weights = merged.scores[idx]
        w = weights / weights.sum()
        out_boxes.append((boxes[idx] * w[:, None]).sum(0))
        out_scores.append(weights.sum() / num_copies)
        kps = merged.pred_keypoints[idx]
        xy = (kps[:, :, :2] * w[:, None, None]).sum(0)
        out_kps.append(torch.cat([xy, kps[:, :, 2:].sum(0) / num_copies], dim=1))
    result = Instances(image_size)
    result.pred_boxes = Boxes(torch.stack(out_boxes))
    result.scores = torch.stack(out_scores)
    result.pred_classes = merged.pred_classes[keep]
    result.pred_keypoints = torch.stack(out_kps)
    return result[torch.argsort(result.scores, descending=True)]


@pytest.mark.parametrize("num_copies", [2, 4])
def test_mean_fusion_equals_the_per_detection_loop(num_copies):
    gen = torch.Generator().manual_seed(num_copies)
    per_copy = []
    for _ in range(num_copies):
        n = 40
        xy = torch.rand(n, 2, generator=gen) * 80
        wh = 10 + torch.rand(n, 2, generator=gen) * 30
        inst = Instances((120, 120))
        inst.pred_boxes = Boxes(torch.cat([xy, xy + wh], dim=1))
        inst.scores = torch.rand(n, generator=gen)
        inst.pred_classes = torch.randint(3, (n,), generator=gen)
        inst.pred_keypoints = torch.rand(n, 5, 3, generator=gen) * 100
        per_copy.append(inst)
    got = fuse_detections(per_copy, (120, 120), 0.5, 100, "mean")
    expected = _mean_fusion_loop(per_copy, (120, 120), 0.5, 100)
    assert len(got) == len(expected) > 10
    assert torch.equal(got.pred_classes, expected.pred_classes)
    for field in ("scores", "pred_keypoints"):
        torch.testing.assert_close(got.get(field), expected.get(field), rtol=0, atol=0)
    torch.testing.assert_close(got.pred_boxes.tensor, expected.pred_boxes.tensor, rtol=0, atol=0)
