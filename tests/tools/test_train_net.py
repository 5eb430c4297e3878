"""train_net.py end to end on tiny synthetic data, the solver, and DefaultPredictor loading."""

import numpy as np
import os
import subprocess
import sys
from pathlib import Path
import pytest
import torch
from torch import nn

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import DefaultPredictor, default_argument_parser

import kgdet
from builders import load_script
from kgdet.data.synthetic import register_synthetic_dataset
from kgdet.solver import build_optimizer

REPO = Path(__file__).resolve().parents[2]
TRAIN_SET, VAL_SET = "kgdet_test_train_net_train", "kgdet_test_train_net_val"
# A small, fast version of configs/kgdet_synth.yaml (same structure, narrower, 128 px).
TINY_OPTS = [
    "MODEL.DEVICE", "cpu",
    "MODEL.FPN.OUT_CHANNELS", "64",
    "MODEL.KGDET.FEAT_CHANNELS", "64",
    "INPUT.MIN_SIZE_TRAIN", "(128,)",
    "INPUT.MAX_SIZE_TRAIN", "128",
    "INPUT.MIN_SIZE_TEST", "128",
    "INPUT.MAX_SIZE_TEST", "128",
    "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.WARMUP_ITERS", "1",
    "SOLVER.STEPS", "()",
    "DATALOADER.NUM_WORKERS", "0",
    "TEST.EVAL_PERIOD", "0",
]  # fmt: skip


def _load_train_net():
    return load_script(REPO / "train_net.py", "kgdet_train_net")


@pytest.fixture(scope="module")
def tiny_datasets(tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("synth_cache"))
    register_synthetic_dataset(TRAIN_SET, "df2_like", 6, seed=11, image_size=128, cache_root=cache)
    register_synthetic_dataset(VAL_SET, "df2_like", 3, seed=12, image_size=128, cache_root=cache)
    yield TRAIN_SET, VAL_SET
    for name in (TRAIN_SET, VAL_SET):
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


@pytest.fixture(scope="module")
def trained(tiny_datasets, tmp_path_factory):
    """Two training iterations of train_net.main, then its final evaluation."""
    train_net = _load_train_net()
    out = tmp_path_factory.mktemp("train_net_out")
    datasets = [
        "DATASETS.TRAIN", f"('{TRAIN_SET}',)", "DATASETS.TEST", f"('{VAL_SET}',)"
    ]  # fmt: skip
    opts = TINY_OPTS + datasets + ["SOLVER.MAX_ITER", "2", "OUTPUT_DIR", str(out)]
    args = default_argument_parser().parse_args(
        ["--config-file", str(REPO / "configs" / "kgdet_synth.yaml"), *opts]
    )
    train_net.main(args)
    return train_net, out, datasets


@pytest.mark.slow
def test_train_then_evaluate_then_resume(trained):
    train_net, out, datasets = trained
    assert (out / "model_final.pth").exists()
    assert (out / "config.yaml").exists()
    assert (out / "metrics.json").exists()
    assert (out / "last_checkpoint").read_text().strip() == "model_final.pth"

    # --eval-only with the trained weights returns box and keypoint AP.
    args = default_argument_parser().parse_args(
        [
            "--config-file", str(REPO / "configs" / "kgdet_synth.yaml"), "--eval-only",
            *TINY_OPTS, *datasets, "OUTPUT_DIR", str(out),
            "MODEL.WEIGHTS", str(out / "model_final.pth"),
        ]
    )  # fmt: skip
    results = train_net.main(args)
    assert "bbox" in results and "AP" in results["bbox"]
    assert any(task.startswith("keypoints") for task in results), list(results)

    # TEST.AUG.ENABLED adds the flip-TTA evaluation (kgdet.tta) under "*_TTA" keys.
    args = default_argument_parser().parse_args(
        [
            "--config-file", str(REPO / "configs" / "kgdet_synth.yaml"), "--eval-only",
            *TINY_OPTS, *datasets, "OUTPUT_DIR", str(out),
            "MODEL.WEIGHTS", str(out / "model_final.pth"),
            "TEST.AUG.ENABLED", "True", "TEST.AUG.MIN_SIZES", "(128,)", "TEST.AUG.MAX_SIZE", "128",
        ]
    )  # fmt: skip
    results = train_net.main(args)
    assert "bbox" in results and "bbox_TTA" in results
    assert (out / "inference_TTA" / VAL_SET).is_dir()

    # --resume continues from the last checkpoint (iteration 2) to MAX_ITER 3.
    args = default_argument_parser().parse_args(
        [
            "--config-file", str(REPO / "configs" / "kgdet_synth.yaml"), "--resume",
            *TINY_OPTS, *datasets, "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "3",
        ]
    )  # fmt: skip
    trainer = train_net.Trainer(train_net.setup(args))
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 2


@pytest.mark.slow
def test_trained_model_loads_in_default_predictor(trained):
    _, out, _ = trained
    cfg = get_cfg()
    kgdet.add_kgdet_config(cfg)
    cfg.merge_from_file(str(REPO / "configs" / "kgdet_synth.yaml"))
    cfg.merge_from_list(TINY_OPTS)
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (TRAIN_SET,), (VAL_SET,)
    cfg.MODEL.WEIGHTS = str(out / "model_final.pth")
    cfg.MODEL.KGDET.SCORE_THRESH_TEST = 0.0
    predictor = DefaultPredictor(cfg)
    rng = np.random.default_rng(0)
    image = (rng.random((100, 140, 3)) * 255).astype(np.uint8)  # BGR, like cv2.imread
    instances = predictor(image)["instances"]
    assert len(instances) > 0
    assert instances.pred_keypoints.shape == (len(instances), 108, 3)
    assert instances.image_size == (100, 140)


def test_solver_clips_the_joint_gradient_norm():
    cfg = get_cfg()
    kgdet.add_kgdet_config(cfg)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    optimizer = build_optimizer(cfg, model)
    assert cfg.SOLVER.CLIP_GRADIENTS_FULL_MODEL_NORM == 35.0
    for p in model.parameters():
        p.grad = torch.full_like(p, 100.0)
    optimizer.step()
    total = torch.norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert abs(total.item() - 35.0) < 1e-3
    # One common scale for all parameters (not a per-parameter clip).
    values = [p.grad.abs().max().item() for p in model.parameters()]
    assert max(values) == pytest.approx(min(values))


def test_solver_rejects_two_clippings_and_can_be_disabled():
    cfg = get_cfg()
    kgdet.add_kgdet_config(cfg)
    model = nn.Linear(2, 2)
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    with pytest.raises(ValueError, match="CLIP_GRADIENTS.ENABLED.*CLIP_GRADIENTS_FULL_MODEL_NORM"):
        build_optimizer(cfg, model)
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = False
    cfg.SOLVER.CLIP_GRADIENTS_FULL_MODEL_NORM = 0.0
    optimizer = build_optimizer(cfg, model)
    assert type(optimizer) is torch.optim.SGD


def test_solver_adamw_option():
    cfg = get_cfg()
    kgdet.add_kgdet_config(cfg)
    model = nn.Sequential(nn.Linear(3, 4), nn.GroupNorm(2, 4))
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    cfg.SOLVER.BASE_LR = 0.001
    cfg.SOLVER.WEIGHT_DECAY = 0.05
    cfg.SOLVER.WEIGHT_DECAY_NORM = 0.0
    optimizer = build_optimizer(cfg, model)
    assert isinstance(optimizer, torch.optim.AdamW)
    # Detectron2's parameter groups: no decay on the GroupNorm parameters.
    decays = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert decays[id(model[0].weight)] == 0.05 and decays[id(model[1].weight)] == 0.0
    for p in model.parameters():
        p.grad = torch.full_like(p, 100.0)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.step()  # the joint clipping still applies before AdamW's update
    total = torch.norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert abs(total.item() - 35.0) < 1e-3
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    cfg.SOLVER.OPTIMIZER = "LAMB"
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER must be 'SGD' or 'ADAMW'"):
        build_optimizer(cfg, model)


@pytest.mark.slow
def test_two_cpu_processes(tmp_path):
    """``--num-gpus 2`` on CPU: Detectron2's launch with gloo and DDP without unused parameters."""
    env = dict(os.environ)
    env.update(
        KGDET_SYNTH_CACHE=str(tmp_path / "cache"),
        KGDET_SYNTH_NUM_TRAIN="4",
        KGDET_SYNTH_NUM_VAL="2",
        KGDET_SYNTH_IMAGE_SIZE="96",
        OMP_NUM_THREADS="1",
    )
    cmd = [
        sys.executable, str(REPO / "train_net.py"),
        "--config-file", str(REPO / "configs" / "kgdet_synth.yaml"), "--num-gpus", "2",
        "--dist-url", "auto",
        *TINY_OPTS, "SOLVER.MAX_ITER", "2", "DATASETS.TEST", "()",
        "OUTPUT_DIR", str(tmp_path / "out"),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "out" / "model_final.pth").exists()
