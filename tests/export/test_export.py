"""kgdet.export: the exported graph (TorchScript, ONNX Runtime) gives eager PyTorch's detections.

A small random-init model (the synthetic config) with a spread of head weights, so that a low
score threshold gives many detections with distinct scores. The graph is traced on one image
size and run through ``ExportedPredictor`` on synthetic validation images and DeepFashion2 demo
images resized to other sizes; ``DefaultPredictor`` with the same weights is the reference.
"""

import numpy as np
from pathlib import Path
import pytest
import torch

from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import read_image
from detectron2.engine import DefaultPredictor
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from detectron2.modeling import build_model
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances

from kgdet import get_kgdet_cfg
from kgdet.export import (
    ExportedPredictor,
    export_inference,
    export_model,
    fold_frozen_batchnorm,
    load_exported_model,
)
from scipy.optimize import linear_sum_assignment

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(REPO_ROOT / "configs" / "kgdet_synth.yaml")
EXPORT_SIZE = (256, 320)
# (MIN_SIZE_TEST, MAX_SIZE_TEST): the predictors resize every image to sizes != EXPORT_SIZE.
TEST_SIZES = [(224, 288), (288, 352)]
BOX_TOL, KP_TOL, SCORE_TOL = 0.05, 0.05, 1e-4
DETECTIONS_PER_IMAGE = 100  # TEST.DETECTIONS_PER_IMAGE of the config


def _cfg(weights: str = "", min_size: int = 256, max_size: int = 320, thresh: float = 0.05):
    return get_kgdet_cfg(
        CONFIG,
        [
            "MODEL.DEVICE", "cpu",
            "MODEL.WEIGHTS", weights,
            "MODEL.KGDET.SCORE_THRESH_TEST", str(thresh),
            "INPUT.MIN_SIZE_TEST", str(min_size),
            "INPUT.MAX_SIZE_TEST", str(max_size),
        ],
    )  # fmt: skip


def _spread_head(model: torch.nn.Module) -> None:
    """Head weights with a wider spread than the prior init and 0 class bias: many detections
    with distinct scores and boxes (the initial prior makes all scores ~0.01)."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.head.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * 0.05)
        for stage in model.head.stages:
            stage.cls_out.bias.zero_()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Weights saved as a checkpoint, and the model exported from them in both formats."""
    root = tmp_path_factory.mktemp("export")
    cfg = _cfg()
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    _spread_head(model)
    ckpt = root / "model.pth"
    torch.save({"model": model.state_dict()}, ckpt)
    gen = torch.Generator().manual_seed(1)
    image = torch.rand(3, *EXPORT_SIZE, generator=gen) * 255
    paths = {"torchscript": root / "model.ts"}
    export_model(model, cfg, image, str(paths["torchscript"]), "torchscript")
    if _has_onnx():
        paths["onnx"] = root / "model.onnx"
        export_model(model, cfg, image, str(paths["onnx"]), "onnx")
    return {"model": model, "checkpoint": str(ckpt), "paths": paths}


def _has_onnx() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _need_backend(fmt: str) -> None:
    if fmt == "onnx":
        pytest.importorskip("onnx", reason="onnx is not installed (pip install -e .[deploy])")
        pytest.importorskip(
            "onnxruntime", reason="onnxruntime is not installed (pip install -e .[deploy])"
        )


def assert_same_detections(ref, out, context: str) -> None:
    """Same number of detections and classes; boxes and keypoints within 0.05 px, scores
    within 1e-4. Detections are paired by class and box (an exact tie in score may order two
    detections differently), then every pair is checked."""
    assert len(out) == len(ref), f"{context}: {len(out)} detections, eager has {len(ref)}"
    if len(ref) == 0:
        return
    if len(ref) == DETECTIONS_PER_IMAGE:
        # The per-image cap cuts a ranking of scores that agree only within SCORE_TOL: a
        # detection scored within SCORE_TOL of the last one kept may be kept by one graph and
        # the next one by the other. Compare the detections above that band (at most a few
        # are in it).
        cut = float(torch.minimum(ref.scores.min(), out.scores.min())) + SCORE_TOL
        ref, out = ref[ref.scores > cut], out[out.scores > cut]
        assert len(out) == len(ref), f"{context}: {len(out)} detections above the cap's band, " \
            f"eager has {len(ref)}"  # fmt: skip
        assert len(ref) >= DETECTIONS_PER_IMAGE - 5, f"{context}: {len(ref)} above the band"
    rb, ob = ref.pred_boxes.tensor, out.pred_boxes.tensor
    cost = (rb[:, None, :] - ob[None, :, :]).abs().amax(-1)
    cost[ref.pred_classes[:, None] != out.pred_classes[None, :]] = 1e9
    rows, cols = linear_sum_assignment(cost.numpy())
    cols = torch.as_tensor(cols)
    assert torch.equal(ref.pred_classes[rows], out.pred_classes[cols]), f"{context}: classes"
    box_diff = float((rb[rows] - ob[cols]).abs().max())
    score_diff = float((ref.scores[rows] - out.scores[cols]).abs().max())
    assert box_diff <= BOX_TOL, f"{context}: boxes differ by {box_diff:.4f} px"
    assert score_diff <= SCORE_TOL, f"{context}: scores differ by {score_diff:.2e}"
    rk, ok = ref.pred_keypoints[rows], out.pred_keypoints[cols]
    kp_diff = float((rk[..., :2] - ok[..., :2]).abs().max())
    kp_score_diff = float((rk[..., 2] - ok[..., 2]).abs().max())
    assert kp_diff <= KP_TOL, f"{context}: keypoints differ by {kp_diff:.4f} px"
    assert kp_score_diff <= SCORE_TOL, f"{context}: keypoint scores differ by {kp_score_diff}"


def _check_parity(exported, fmt: str, images, min_size: int, max_size: int) -> int:
    cfg = _cfg(exported["checkpoint"], min_size, max_size)
    reference = DefaultPredictor(cfg)
    predictor = ExportedPredictor(cfg, str(exported["paths"][fmt]))
    sizes, total = set(), 0
    for name, image in images:
        ref = reference(image)["instances"]
        out = predictor(image)["instances"]
        assert out.image_size == ref.image_size == image.shape[:2]
        assert_same_detections(ref, out, f"{fmt} on {name} at {min_size}/{max_size}")
        sizes.add(tuple(predictor.aug.get_transform(image).apply_image(image).shape[:2]))
        total += len(ref)
    assert EXPORT_SIZE not in sizes
    return total


@pytest.fixture(scope="module")
def synthetic_val_images(tmp_path_factory):
    """8 synthetic validation images (generated into a private cache)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("KGDET_SYNTH_CACHE", str(tmp_path_factory.mktemp("synth_cache")))
    mp.setenv("KGDET_SYNTH_NUM_VAL", "8")
    try:
        records = DatasetCatalog.get("kgdet_synth_val")[:8]
        images = [(Path(r["file_name"]).name, read_image(r["file_name"], "BGR")) for r in records]
    finally:
        mp.undo()
    assert len(images) == 8
    return images


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
@pytest.mark.parametrize("min_size,max_size", TEST_SIZES)
def test_parity_on_synthetic_val(exported, synthetic_val_images, fmt, min_size, max_size):
    _need_backend(fmt)
    total = _check_parity(exported, fmt, synthetic_val_images, min_size, max_size)
    assert total >= 8 * 10, "the test model should detect many garments per image"


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_parity_on_deepfashion2_demo(exported, df2_demo_dir, monkeypatch, fmt):
    _need_backend(fmt)
    monkeypatch.setenv("KGDET_DF2_DEMO", str(df2_demo_dir))
    records = DatasetCatalog.get("deepfashion2_demo")[:4]
    images = [(Path(r["file_name"]).name, read_image(r["file_name"], "BGR")) for r in records]
    for min_size, max_size in TEST_SIZES:
        assert _check_parity(exported, fmt, images, min_size, max_size) > 0


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_graph_outputs_any_size_and_empty(exported, fmt):
    """Raw graph outputs on sizes not divisible by 32, and a threshold nothing passes."""
    _need_backend(fmt)
    model = exported["model"]
    runtime = load_exported_model(str(exported["paths"][fmt]))
    assert runtime.metadata["output_names"] == [
        "pred_boxes", "pred_classes", "pred_keypoints", "scores", "image_size"
    ]  # fmt: skip
    gen = torch.Generator().manual_seed(2)
    for h, w in ((200, 300), (330, 170)):
        image = torch.rand(3, h, w, generator=gen) * 255
        with torch.no_grad():
            ref = model([{"image": image}])[0]["instances"]
        out = runtime(image)
        assert out["image_size"].tolist() == [h, w]
        assert out["pred_keypoints"].shape[1:] == (model.num_keypoints, 3)
        fields = {k: v for k, v in out.items() if k not in ("image_size", "pred_boxes")}
        raw = Instances((h, w), pred_boxes=Boxes(out["pred_boxes"]), **fields)
        # The model's forward ends with detector_postprocess (drops boxes clipped to nothing),
        # as ExportedPredictor does.
        assert_same_detections(ref, detector_postprocess(raw, h, w), f"{fmt} graph at {h}x{w}")
        # Keypoint scores: the detection score inside the predicted class's slots, else 0.
        mask = model.class_keypoint_mask[out["pred_classes"]]
        expected = out["scores"][:, None] * mask
        assert torch.allclose(out["pred_keypoints"][..., 2], expected)


@pytest.mark.slow
def test_predictor_threshold_and_errors(exported, tmp_path, synthetic_val_images):
    """A config threshold above the exported one drops the detections below it (the same ones
    the eager model drops); bad paths and files are clear errors."""
    path = str(exported["paths"]["torchscript"])
    cfg = _cfg(exported["checkpoint"], *TEST_SIZES[0], thresh=0.5)
    name, image = synthetic_val_images[0]
    ref = DefaultPredictor(cfg)(image)["instances"]
    out = ExportedPredictor(cfg, path)(image)["instances"]
    assert len(ref) > 0 and bool((out.scores > 0.5).all())
    assert_same_detections(ref, out, f"threshold 0.5 on {name}")

    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        ExportedPredictor(cfg, str(tmp_path / "missing.onnx"))
    plain = tmp_path / "plain.ts"
    torch.jit.save(torch.jit.script(torch.nn.Identity()), str(plain))
    with pytest.raises(ValueError, match="no 'kgdet_export' metadata"):
        ExportedPredictor(cfg, str(plain))
    bgr_cfg = cfg.clone()
    bgr_cfg.INPUT.FORMAT = "BGR"
    with pytest.raises(ValueError, match="exported for INPUT.FORMAT 'RGB'"):
        ExportedPredictor(bgr_cfg, path)


@pytest.mark.slow
def test_export_inference_matches_eager_model(exported):
    """The traceable inference run eagerly is the model's own inference."""
    model = exported["model"]
    image = torch.rand(3, 224, 288, generator=torch.Generator().manual_seed(3)) * 255
    with torch.no_grad():
        ref = model([{"image": image}])[0]["instances"]
        out = export_inference(model, [{"image": image}])[0]["instances"]
    assert_same_detections(ref, detector_postprocess(out, 224, 288), "eager export_inference")


def test_fold_frozen_batchnorm_keeps_the_function():
    gen = torch.Generator().manual_seed(0)
    for bias in (False, True):
        norm = FrozenBatchNorm2d(8)
        norm.weight.copy_(torch.rand(8, generator=gen) + 0.5)
        norm.bias.copy_(torch.randn(8, generator=gen))
        norm.running_mean.copy_(torch.randn(8, generator=gen))
        norm.running_var.copy_(torch.rand(8, generator=gen) + 0.1)
        conv = Conv2d(3, 8, 3, padding=1, bias=bias, norm=norm).eval()
        x = torch.randn(2, 3, 9, 7, generator=gen)
        with torch.no_grad():
            ref = conv(x)
            assert fold_frozen_batchnorm(torch.nn.Sequential(conv)) == 1
            assert conv.norm is None
            np.testing.assert_allclose(conv(x).numpy(), ref.numpy(), rtol=1e-5, atol=1e-5)
