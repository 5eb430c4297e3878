"""DFA's public APIs refuse non-finite or inverted boxes by index; only small valid ones grow."""

import numpy as np
import pytest
import torch

from detectron2.config import get_cfg

import dfa
from dfa.boxes import check_boxes_xyxy
from dfa.landmarks import sanitize_box


def test_check_boxes_xyxy():
    np.testing.assert_array_equal(check_boxes_xyxy([[1, 2, 3, 4]]), [[1, 2, 3, 4]])
    assert check_boxes_xyxy(np.zeros((0, 4))).shape == (0, 4)
    with pytest.raises(
        ValueError, match=r"boxes\[1\] = \[150.0, 60.0, 80.0, 220.0\] has width -70"
    ):
        check_boxes_xyxy([[0, 0, 5, 5], [150, 60, 80, 220]])
    with pytest.raises(ValueError, match=r"boxes\[0\] .* is not finite"):
        check_boxes_xyxy([[float("nan")] * 4])
    with pytest.raises(ValueError, match=r"boxes\[0\]"):
        check_boxes_xyxy([[5, 5, 5, 9]])  # zero width
    check_boxes_xyxy([[5, 5, 5, 9]], allow_zero_size=True)
    with pytest.raises(ValueError, match="shape"):
        check_boxes_xyxy([1, 2, 3])


def test_sanitize_box_grows_only_small_valid_boxes():
    np.testing.assert_allclose(sanitize_box([10, 10, 10.5, 20]), [9.75, 10, 10.75, 20])
    with pytest.raises(ValueError):
        sanitize_box([10, 10, 5, 20])
    with pytest.raises(ValueError):
        sanitize_box([float("inf"), 0, 1, 1])


@pytest.fixture(scope="module")
def predictor():
    cfg = get_cfg()
    dfa.add_dfa_config(cfg)
    cfg.merge_from_file("configs/dfa_synth.yaml")
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = "cpu"
    return dfa.DFAPredictor(cfg)


def test_predictor_box_inputs(predictor):
    image = np.full((120, 100, 3), 20, np.uint8)
    out = predictor(image, [[10, 20, 60, 100], [1000, 1000, 1100, 1100], [30, 30, 30.4, 31]])
    assert out["aligned_keypoints"].shape[0] == 3 and torch.isfinite(out["aligned_keypoints"]).all()
    assert predictor(image, np.zeros((0, 4)))["aligned_keypoints"].shape[0] == 0
    with pytest.raises(ValueError, match=r"boxes\[1\]"):
        predictor(image, [[10, 20, 60, 100], [50, 20, 10, 100]])
    with pytest.raises(ValueError, match=r"boxes\[0\] .* not finite"):
        predictor(image, [[float("nan")] * 4])


def test_boxes_as_tensors_numpy_cannot_read(predictor):
    """A detector's boxes straight from the model: tensors that NumPy cannot read directly
    (requiring grad here; on the GPU the same path copies them with .cpu())."""
    boxes = torch.tensor([[10.0, 20.0, 60.0, 100.0]], requires_grad=True) * 1.0
    np.testing.assert_array_equal(check_boxes_xyxy(boxes), [[10, 20, 60, 100]])
    image = np.full((120, 100, 3), 20, np.uint8)
    out = predictor(image, boxes, torch.tensor([0]))
    assert out["aligned_keypoints"].shape[0] == 1
