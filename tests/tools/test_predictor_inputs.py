"""Every predictor checks its image at the boundary (kgdet.data.image_io.as_uint8_image): gray,
alpha and 16-bit arrays converted exactly as image files are, float and odd shapes refused."""

import numpy as np
import pytest
import torch

from detectron2.config import get_cfg

from kgdet.checkpoint import CheckpointReadError
from kgdet.data.image_io import ImageArrayError, as_uint8_image, decode_image
from kgdet.export.predictor import ExportedPredictor
from PIL import Image


def _bgr(h=24, w=20):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_arrays_convert_as_files_do(tmp_path):
    rgba = np.dstack(
        [_bgr()[:, :, ::-1], np.linspace(0, 255, 20, dtype=np.uint8)[None].repeat(24, 0)]
    )
    Image.fromarray(rgba).save(tmp_path / "a.png")
    bgra = rgba[:, :, [2, 1, 0, 3]]  # what cv2.IMREAD_UNCHANGED gives
    assert np.array_equal(as_uint8_image(bgra, "BGR"), decode_image(tmp_path / "a.png").image)
    assert np.array_equal(
        as_uint8_image(rgba, "RGB"), decode_image(tmp_path / "a.png", "RGB").image
    )
    gray16 = (np.arange(24 * 20, dtype=np.uint16).reshape(24, 20) * 131).astype(np.uint16)
    Image.fromarray(gray16).save(tmp_path / "g.png")
    assert np.array_equal(as_uint8_image(gray16), decode_image(tmp_path / "g.png").image)
    gray = _bgr()[:, :, 0]
    assert np.array_equal(as_uint8_image(gray), np.repeat(gray[:, :, None], 3, 2))
    assert np.array_equal(as_uint8_image(_bgr().astype(np.uint16) * 257), _bgr())
    same = _bgr()
    assert as_uint8_image(same) is same or np.array_equal(as_uint8_image(same), same)


@pytest.mark.parametrize(
    "array, match",
    [
        (_bgr().astype(np.float32) / 255, r"dtype float32; expected \(H, W, 3\) uint8 in BGR"),
        (_bgr().astype(np.int32), r"shape \(24, 20, 3\) dtype int32"),
        (np.zeros((24, 20, 2), np.uint8), r"shape \(24, 20, 2\)"),
        (np.zeros((0, 20, 3), np.uint8), r"shape \(0, 20, 3\)"),
        ([[1, 2]], "got a list"),
    ],
)
def test_other_arrays_are_refused_in_one_line(array, match):
    with pytest.raises(ImageArrayError, match=match) as err:
        as_uint8_image(array, "BGR", "my image")
    assert "\n" not in str(err.value) and str(err.value).startswith("my image")


def _exported_stub(seen):
    """ExportedPredictor without a file: its graph records the (3, H, W) input it gets."""
    predictor = ExportedPredictor.__new__(ExportedPredictor)
    import detectron2.data.transforms as T

    predictor.input_format, predictor.score_thresh = "BGR", 0.0
    predictor.aug = T.ResizeShortestEdge([24, 24], 100)

    def model(image):
        seen.append(image)
        return {
            "pred_boxes": torch.zeros(0, 4),
            "scores": torch.zeros(0),
            "pred_classes": torch.zeros(0, dtype=torch.long),
        }

    predictor.model = model
    return predictor


def test_exported_predictor_checks_its_input():
    seen = []
    predictor = _exported_stub(seen)
    bgra = np.dstack([_bgr(), np.full((24, 20), 255, np.uint8)])
    predictor(bgra)
    predictor(_bgr())
    assert torch.equal(seen[0], seen[1])
    with pytest.raises(ValueError, match="ExportedPredictor image: got shape .* dtype float32"):
        predictor(_bgr().astype(np.float32) / 255)


def _dfa(config):
    import dfa

    cfg = get_cfg()
    dfa.add_dfa_config(cfg)
    cfg.merge_from_file(config)
    cfg.MODEL.WEIGHTS, cfg.MODEL.DEVICE = "", "cpu"
    torch.manual_seed(0)
    return dfa.DFAPredictor(cfg)


def test_dfa_predictor_input_and_classes():
    aligner = _dfa("configs/dfa_synth_per_type.yaml")
    image, box = _bgr(64, 48), [[4, 6, 40, 60]]
    ref = aligner(image, box, [2])["aligned_keypoints"]
    assert torch.equal(aligner(image.astype(np.uint16) * 257, box, [2])["aligned_keypoints"], ref)
    assert torch.equal(aligner(image, box, ["whole"])["aligned_keypoints"], ref)
    with pytest.raises(
        ValueError,
        match=r"classes\[0\] = 3; expected contiguous class indices "
        r"0\.\.2 \(FLD clothes_type - 1",
    ):
        aligner(image, box, [3])
    with pytest.raises(ValueError, match="DFAPredictor image: got shape .* float64"):
        aligner(image / 255.0, box, [0])


def test_kgdet_predictor_checks_its_input(tmp_path):
    from kgdet import get_kgdet_cfg
    from kgdet.predictor import KGDetPredictor

    torch.manual_seed(0)
    cfg = get_kgdet_cfg("configs/kgdet_synth.yaml", ["MODEL.DEVICE", "cpu"])
    predictor = KGDetPredictor(cfg)
    gray = _bgr(64, 48)[:, :, 0]
    a = predictor(gray)["instances"]
    b = predictor(np.repeat(gray[:, :, None], 3, 2))["instances"]
    assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
    with pytest.raises(ValueError, match=r"KGDetPredictor image: got shape \(64, 48, 3\) dtype"):
        predictor(_bgr(64, 48).astype(np.float32))
    (tmp_path / "cut.pth").write_bytes(b"\x80\x02not a checkpoint")
    weights = ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", str(tmp_path / "cut.pth")]
    with pytest.raises(CheckpointReadError, match="checkpoint .*cut.pth is truncated or corrupt"):
        KGDetPredictor(get_kgdet_cfg("configs/kgdet_synth.yaml", weights))
