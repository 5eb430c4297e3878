"""The export check compares detections as matched sets: the same detections in another order
are reported identical, a wrong export is still reported different."""

import torch

from detectron2.structures import Boxes, Instances

from kgdet.export import compare_detections


def _instances(boxes, scores, classes, keypoints):
    inst = Instances((100, 100))
    inst.pred_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32))
    inst.scores = torch.as_tensor(scores, dtype=torch.float32)
    inst.pred_classes = torch.as_tensor(classes)
    inst.pred_keypoints = torch.as_tensor(keypoints, dtype=torch.float32)
    return inst


def _reference():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(6, 2, generator=g) * 50
    boxes = torch.cat([xy, xy + 10 + torch.rand(6, 2, generator=g) * 30], 1)
    scores = torch.tensor([0.9, 0.5, 0.5 + 1e-7, 0.3, 0.3, 0.1])  # ties and near-ties
    kps = torch.rand(6, 4, 3, generator=g) * 90
    return _instances(boxes, scores, [0, 1, 1, 2, 2, 0], kps)


def test_same_detections_in_another_order_match():
    ref = _reference()
    perm = torch.tensor([0, 2, 1, 4, 3, 5])
    line = compare_detections(ref, ref[perm])
    assert "matched as sets (same class, nearest box): 6" in line
    assert "boxes 0.00e+00, scores 0.00e+00, keypoints 0.00e+00" in line


def test_wrong_export_is_reported():
    ref = _reference()
    wrong = ref[torch.tensor([0, 2, 1, 4, 3, 5])]
    wrong.pred_boxes = Boxes(wrong.pred_boxes.tensor + 5.0)
    assert "boxes 5.00e+00" in compare_detections(ref, wrong)
    assert "exported 5" in compare_detections(ref, ref[:5])
