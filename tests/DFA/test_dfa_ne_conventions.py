"""Both NE conventions (per-axis box-normalised, long-side-normalised) against hand-computed
values on boxes of aspect ratio 1 and 2, and the authors' padded crop mapped back to pixels."""

import numpy as np
import pytest
import torch

from detectron2.modeling import build_model

from builders import tiny_dfa_cfg as tiny_cfg
from dfa.landmarks import (
    crop_box,
    crop_pixels_to_normalized,
    denormalize_landmarks,
    landmark_frame,
    normalize_landmarks,
    normalized_to_crop_pixels,
)
from kgdet.evaluation.fld_metrics import fld_metrics

SLOTS = [[0, 1, 2, 3, 4, 5, 6, 7]]


def _metrics(box_wh, offsets):
    """One garment with 8 visible landmarks at 0, predictions = GT + offsets (8, 2) pixels."""
    gt = np.zeros((1, 8, 2))
    return fld_metrics(
        pred=gt + np.asarray(offsets, dtype=np.float64)[None],
        gt=gt,
        counted=np.ones((1, 8), dtype=bool),
        classes=np.zeros(1, dtype=np.int64),
        box_wh=np.asarray([box_wh], dtype=np.float64),
        image_wh=np.asarray([[1000.0, 1000.0]]),
        class_slots=SLOTS,
        class_names=["Whole"],
        keypoint_names=[f"kp{i}" for i in range(8)],
    )


def test_ne_conventions_on_a_square_box():
    # 100 x 100 box: a (3, 4) px error is 0.05 in both conventions.
    res = _metrics((100.0, 100.0), [[3.0, 4.0]] * 8)
    assert res["NE"] == pytest.approx(0.05)
    assert res["NE_long"] == pytest.approx(0.05)
    assert res["type=Whole/NE_long"] == pytest.approx(0.05)
    assert res["NE_long/kp3"] == pytest.approx(0.05)


def test_ne_conventions_on_an_aspect_ratio_2_box():
    # 200 x 100 box (w x h), error (6, 8) px on every landmark:
    #   per axis: sqrt((6/200)^2 + (8/100)^2) = sqrt(0.0009 + 0.0064) = 0.085440
    #   long side: sqrt(6^2 + 8^2) / 200 = 10 / 200 = 0.05
    res = _metrics((200.0, 100.0), [[6.0, 8.0]] * 8)
    assert res["NE"] == pytest.approx(np.sqrt(0.0073), rel=1e-9)
    assert res["NE_long"] == pytest.approx(0.05)
    # Same box standing (100 wide, 200 high), a pure 10 px x error: 0.1 vs 0.05.
    res = _metrics((100.0, 200.0), [[10.0, 0.0]] * 8)
    assert res["NE"] == pytest.approx(0.1) and res["NE_long"] == pytest.approx(0.05)
    # PDL at 15 px of the 224 frame: 224 * 0.1 = 22.4 > 15 (missed), 224 * 0.05 = 11.2 (hit)
    assert res["PDL@15"] == 0.0 and res["PDL_long@15"] == 100.0
    # Mixed errors (slot k: k px in x, 0 in y) on a 200 x 100 box: per axis k / 200 as well.
    res = _metrics((200.0, 100.0), [[k, 0.0] for k in range(8)])
    assert res["NE"] == pytest.approx(np.mean(np.arange(8) / 200))
    assert res["NE_long"] == pytest.approx(np.mean(np.arange(8) / 200))


def test_landmark_frame_of_the_padded_crop():
    boxes = torch.tensor([[40.0, 30.0, 160.0, 90.0], [10.0, 0.0, 30.0, 40.0]])
    assert torch.equal(landmark_frame(boxes, "stretch"), boxes)
    assert landmark_frame(boxes, "pad").tolist() == [[40, 0, 160, 120], [0, 0, 40, 40]]
    with pytest.raises(ValueError, match="CROP_MODE"):
        landmark_frame(boxes, "squash")


@pytest.mark.parametrize("box", [[40.0, 30.0, 160.0, 90.0], [60.0, 10.0, 90.0, 70.0]])
@pytest.mark.parametrize("expand", [1.0, 1.2])
def test_padded_crop_maps_a_drawn_landmark_back_to_its_pixel(box, expand):
    image = np.zeros((100, 200, 3), np.uint8)
    image[:, :] = 30  # context outside the box must not appear in the padding
    point = np.array([70.3, 45.6]) if box[0] == 40.0 else np.array([80.2, 50.7])
    ys, xs = np.mgrid[0:100, 0:200] + 0.5
    blob = np.exp(-((xs - point[0]) ** 2 + (ys - point[1]) ** 2) / (2 * 2.0**2))
    image[:, :, 1] = np.clip(30 + 225 * blob, 0, 255).astype(np.uint8)
    size = 64
    crop = crop_box(image, box, size, expand, mode="pad")
    assert crop.shape == (size, size, 3)
    # The box keeps its aspect ratio: the long side fills the crop, the rest is zero padding.
    w, h = box[2] - box[0], box[3] - box[1]
    short = size * min(w, h) / max(w, h)
    pad = int(np.floor((size - short) / 2))
    if w > h:
        assert crop[:pad].max() == 0 and crop[size - pad :].max() == 0
        assert crop[size // 2, :, 0].min() == 30  # image content across the long side
    else:
        assert crop[:, :pad].max() == 0 and crop[:, size - pad :].max() == 0
    # Locate the landmark in the crop (weighted centroid of the blob) and map it back.
    green = crop[:, :, 1].astype(np.float64) - crop[:, :, 0].astype(np.float64)
    green[green < 0] = 0
    v, u = np.mgrid[0:size, 0:size] + 0.5
    found = torch.tensor([[(u * green).sum() / green.sum(), (v * green).sum() / green.sum()]])
    frame = landmark_frame(torch.tensor(box, dtype=torch.float64), "pad")
    back = denormalize_landmarks(crop_pixels_to_normalized(found.double(), size, expand), frame)
    assert np.abs(back[0].numpy() - point).max() < 0.5
    # And the forward mapping predicts where the blob is in the crop.
    norm = normalize_landmarks(torch.from_numpy(point[None]), frame)
    assert np.abs(normalized_to_crop_pixels(norm, size, expand).numpy() - found.numpy()).max() < 0.5


def test_model_output_in_pad_mode_lands_on_the_hand_computed_pixel():
    model = build_model(tiny_cfg(**{"MODEL.DFA.CROP_MODE": "pad", "MODEL.DFA.NUM_STAGES": 1}))
    model.eval()
    head = model.cascades[0].networks["stage1"].position_head
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([0.25, -0.25] * 8))
    image = torch.zeros(3, 100, 200, dtype=torch.uint8)
    out = model([{"image": image, "boxes": torch.tensor([[40.0, 30.0, 160.0, 90.0]])}])[0]
    # frame: square of side 120 about (100, 60) -> (100 + 0.25 * 120, 60 - 0.25 * 120)
    assert out["aligned_keypoints"][0, 0].tolist() == pytest.approx([130.0, 30.0])
