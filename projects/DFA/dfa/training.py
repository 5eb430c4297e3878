"""Stage-by-stage DFA training: k-means centres, one stage at a time, resumable.

Layout of OUTPUT_DIR (every file written atomically):

    stage1/centres.pth      k-means centres of stage 1 (ground-truth configurations)
    stage1/model_final.pth  cascade after stage 1 (weights + centres + readiness flags)
    stage2/centres.pth      centres on stage-1 training errors + cluster error magnitudes
    stage2/model_final.pth
    stage3/centres.pth      centres on stage-2 contextual errors + routing threshold
    stage3/model_final.pth
    model_final.pth         the complete cascade (copy of the last stage's final checkpoint)

Stage k > 1 starts only from ``stage{k-1}/model_final.pth`` and ``stage{k-1}/centres.pth``
(clear FileNotFoundError otherwise). A stage whose ``model_final.pth`` exists is skipped; an
interrupted stage resumes from its last periodic checkpoint (``stage{k}/checkpoint_*.pth``).
"""

import logging
import os
import shutil
from typing import Dict, List, Optional
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import SimpleTrainer, hooks
from detectron2.engine.defaults import default_writers
from detectron2.modeling import build_model
from detectron2.solver import build_lr_scheduler
from detectron2.solver.build import maybe_add_gradient_clipping

from kgdet.file_io import write_atomic

from .data import build_dfa_garment_loader, build_dfa_train_loader, load_train_garments
from .network import load_vgg16_imagenet, warm_start_from
from .pseudo_labels import (
    cluster_error_magnitudes,
    cluster_space,
    expected_error,
    fit_kmeans,
    offset_magnitudes,
)

__all__ = [
    "stage_dir",
    "centres_path",
    "final_checkpoint_path",
    "require_stage_artifacts",
    "build_dfa_model",
    "build_dfa_optimizer",
    "predict_garments",
    "compute_stage_centres",
    "prepare_stage",
    "train_stage",
    "train_all_stages",
]

logger = logging.getLogger(__name__)


def stage_dir(output_dir: str, stage: int) -> str:
    return os.path.join(output_dir, f"stage{stage}")


def centres_path(output_dir: str, stage: int) -> str:
    return os.path.join(stage_dir(output_dir, stage), "centres.pth")


def final_checkpoint_path(output_dir: str, stage: int) -> str:
    return os.path.join(stage_dir(output_dir, stage), "model_final.pth")


def _atomic_torch_save(obj, path: str) -> None:
    write_atomic(path, lambda tmp: torch.save(obj, tmp))


def require_stage_artifacts(output_dir: str, stage: int) -> None:
    """Stage ``stage`` > 1 needs the previous stage's final weights and cluster centres."""
    if stage == 1:
        return
    previous = stage - 1
    missing = [
        p
        for p in (final_checkpoint_path(output_dir, previous), centres_path(output_dir, previous))
        if not os.path.isfile(p)
    ]
    if missing:
        raise FileNotFoundError(
            f"DFA stage {stage} cannot start: stage-{previous} artefacts missing: "
            f"{', '.join(missing)}. Train stage {previous} first (tools/train_dfa.py "
            f"--stages {previous} {stage}, same OUTPUT_DIR)."
        )


def build_dfa_model(cfg, stage: Optional[int] = None):
    """The DFA model for ``cfg`` (TRAIN_STAGE overridden by ``stage``), with ImageNet VGG-16
    weights copied into every network if MODEL.DFA.PRETRAINED_VGG16 names a file."""
    if stage is not None:
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.DFA.TRAIN_STAGE = stage
    model = build_model(cfg)
    path = cfg.MODEL.DFA.PRETRAINED_VGG16
    if path:
        if cfg.MODEL.DFA.BACKBONE != "VGG16":
            raise ValueError("MODEL.DFA.PRETRAINED_VGG16 is set but MODEL.DFA.BACKBONE != VGG16")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"MODEL.DFA.PRETRAINED_VGG16: no file {path}")
        state = torch.load(path, map_location="cpu")
        for network in model.networks.values():
            load_vgg16_imagenet(network, state)
        logger.info(f"Copied VGG-16 ImageNet weights from {path} into {len(model.networks)} nets")
    return model


def build_dfa_optimizer(cfg, model, stage: int) -> torch.optim.Optimizer:
    """SGD (SOLVER.*) or Adam over the parameters of ``stage`` only; earlier stages frozen."""
    for p in model.parameters():
        p.requires_grad_(False)
    params = model.stage_parameters(stage)
    for p in params:
        p.requires_grad_(True)
    name = cfg.MODEL.DFA.OPTIMIZER.upper()
    solver = cfg.SOLVER
    if name == "SGD":
        cls = maybe_add_gradient_clipping(cfg, torch.optim.SGD)
        return cls(
            params,
            lr=solver.BASE_LR,
            momentum=solver.MOMENTUM,
            nesterov=solver.NESTEROV,
            weight_decay=solver.WEIGHT_DECAY,
        )
    if name == "ADAM":
        cls = maybe_add_gradient_clipping(cfg, torch.optim.AdamW)
        return cls(params, lr=solver.BASE_LR, weight_decay=solver.WEIGHT_DECAY)
    raise ValueError(
        f"MODEL.DFA.OPTIMIZER must be 'SGD' or 'ADAM', got {cfg.MODEL.DFA.OPTIMIZER!r}"
    )


@torch.no_grad()
def predict_garments(cfg, model, garments: List[Dict], num_stages: int) -> Dict[str, torch.Tensor]:
    """Run stages 1..num_stages on un-augmented garment crops.

    Returns ``gt`` (N, L, 2), ``labelled`` (N, L), ``landmarks`` (num_stages, N, L, 2) and
    ``labels`` (num_stages, N, K) pseudo-label logits (all on CPU, in ``garments`` order).
    """
    was_training = model.training
    model.eval()
    gts, masks, marks, labels = [], [], [], []
    try:
        loader = build_dfa_garment_loader(cfg, garments, batch_size=cfg.SOLVER.IMS_PER_BATCH)
        for batch in loader:
            gts.append(torch.stack([b["landmarks"] for b in batch]))
            masks.append(torch.stack([b["labelled"] for b in batch]))
            if num_stages > 0:
                outs = model.run_cascade(torch.stack([b["image"] for b in batch]), num_stages)
                marks.append(torch.stack([o["landmarks"].cpu() for o in outs]))
                labels.append(torch.stack([o["labels"].cpu() for o in outs]))
    finally:
        model.train(was_training)
    result = {"gt": torch.cat(gts), "labelled": torch.cat(masks)}
    if num_stages > 0:
        result["landmarks"] = torch.cat(marks, dim=1)
        result["labels"] = torch.cat(labels, dim=1)
    return result


def compute_stage_centres(cfg, model, garments: List[Dict], stage: int) -> Dict:
    """k-means centres of ``stage``'s pseudo-label space on the training garments (Table 1).

    Stage 2 also gets e(C_k) (mean stage-1 error magnitude per cluster); stage 3 gets the routing
    threshold (ROUTING_THRESHOLD, or the ROUTING_THRESHOLD_QUANTILE of G over training garments).
    """
    d = cfg.MODEL.DFA
    preds = predict_garments(cfg, model, garments, stage - 1)
    gt, labelled = preds["gt"], preds["labelled"]
    prev = preds["landmarks"][-1] if stage > 1 else None
    features = cluster_space(stage, gt, labelled, prev, d.DISTANCE_SCALE)
    centres, assignments = fit_kmeans(features, d.NUM_CLUSTERS, d.KMEANS_N_INIT, d.KMEANS_SEED)
    sizes = torch.bincount(assignments, minlength=d.NUM_CLUSTERS)
    result = {"stage": stage, "centres": centres, "cluster_sizes": sizes, "num_garments": len(gt)}
    if stage > 1:
        errors = offset_magnitudes(prev, gt, labelled)
        result["train_error_mean"] = float(errors.mean())
        if stage == 2:
            result["cluster_error"] = cluster_error_magnitudes(assignments, errors, d.NUM_CLUSTERS)
    if stage == 3:
        g = expected_error(torch.softmax(preds["labels"][-1], dim=1), model.cluster_error_2.cpu())
        q = d.ROUTING_THRESHOLD_QUANTILE
        threshold = float(torch.quantile(g, q)) if 0 < q < 1 else float(d.ROUTING_THRESHOLD)
        result["routing_threshold"] = threshold
        result["train_easy_fraction"] = float((g < threshold).float().mean())
    logger.info(
        f"DFA stage {stage}: {d.NUM_CLUSTERS} centres from {len(gt)} garments, cluster sizes "
        f"{sizes.tolist()}"
        + (f", train error {result['train_error_mean']:.4f}" if stage > 1 else "")
        + (
            f", routing eps {result['routing_threshold']:.4f} "
            f"(easy fraction {result['train_easy_fraction']:.2f})"
            if stage == 3
            else ""
        )
    )
    return result


def _install_centres(model, info: Dict) -> None:
    model.set_centres(
        info["stage"],
        info["centres"].to(model.device),
        cluster_error=info.get("cluster_error"),
        threshold=info.get("routing_threshold"),
    )


def prepare_stage(
    cfg, stage: int, garments: Optional[List[Dict]] = None, reuse_centres: bool = True
):
    """Model ready to train ``stage``: previous stage loaded, this stage's centres installed
    (read from its centres.pth if it exists and ``reuse_centres``, else computed and saved).

    Returns (model, garments). Raises FileNotFoundError if the previous stage is incomplete.
    """
    output_dir = cfg.OUTPUT_DIR
    require_stage_artifacts(output_dir, stage)
    model = build_dfa_model(cfg, stage)
    if stage > 1:
        DetectionCheckpointer(model).load(final_checkpoint_path(output_dir, stage - 1))
        if not bool(model.stage_trained[stage - 2]) or not bool(model.centres_ready[stage - 2]):
            raise RuntimeError(
                f"{final_checkpoint_path(output_dir, stage - 1)} does not hold a trained "
                f"stage {stage - 1} (checkpoint from another run?); delete it and retrain"
            )
        if cfg.MODEL.DFA.INIT_FROM_PREVIOUS_STAGE:
            previous = model.networks[model.stage_network_names(stage - 1)[0]]
            for name in model.stage_network_names(stage):
                warm_start_from(model.networks[name], previous)
            logger.info(f"DFA stage {stage}: initialised from stage {stage - 1}")
    path = centres_path(output_dir, stage)
    if reuse_centres and os.path.isfile(path):
        info = torch.load(path, map_location="cpu")
        logger.info(f"DFA stage {stage}: loaded centres from {path}")
    else:
        garments = garments if garments is not None else load_train_garments(cfg)
        info = compute_stage_centres(cfg, model, garments, stage)
        _atomic_torch_save(info, path)
    _install_centres(model, info)
    return model, garments


def train_stage(cfg, stage: int, resume: bool = True, garments: Optional[List[Dict]] = None):
    """Train one stage; returns (model, garments).

    With ``resume``: skipped if its model_final.pth exists, continued from its last periodic
    checkpoint if any, existing centres reused. Without: centres recomputed, training from scratch.
    """
    output_dir = cfg.OUTPUT_DIR
    final_path = final_checkpoint_path(output_dir, stage)
    if resume and os.path.isfile(final_path):
        logger.info(f"DFA stage {stage}: {final_path} exists, skipping training")
        model = build_dfa_model(cfg, stage)
        DetectionCheckpointer(model).load(final_path)
        return model, garments
    model, garments = prepare_stage(cfg, stage, garments, reuse_centres=resume)
    if garments is None:
        garments = load_train_garments(cfg)
    work_dir = stage_dir(output_dir, stage)
    optimizer = build_dfa_optimizer(cfg, model, stage)
    scheduler = build_lr_scheduler(cfg, optimizer)
    checkpointer = DetectionCheckpointer(model, work_dir, optimizer=optimizer, scheduler=scheduler)
    start_iter = 0
    if resume and checkpointer.has_checkpoint():
        start_iter = checkpointer.resume_or_load("", resume=True).get("iteration", -1) + 1
        _install_centres(model, torch.load(centres_path(output_dir, stage), map_location="cpu"))
        logger.info(f"DFA stage {stage}: resuming at iteration {start_iter}")
    max_iter = cfg.SOLVER.MAX_ITER
    trainer = SimpleTrainer(model, build_dfa_train_loader(cfg, garments), optimizer)
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(optimizer=optimizer, scheduler=scheduler),
            hooks.PeriodicCheckpointer(
                checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD, max_iter, 1, "checkpoint"
            ),
            hooks.PeriodicWriter(default_writers(work_dir, max_iter), period=20),
        ]
    )
    logger.info(f"DFA stage {stage}: training iterations {start_iter}..{max_iter - 1}")
    trainer.train(start_iter, max_iter)
    model.stage_trained[stage - 1] = True
    _atomic_torch_save({"model": model.state_dict(), "stage": stage}, final_path)
    logger.info(f"DFA stage {stage}: saved {final_path}")
    return model, garments


def train_all_stages(cfg, stages: Optional[List[int]] = None, resume: bool = True):
    """Train ``stages`` (default 1..NUM_STAGES) in order; returns the last model.

    Also writes OUTPUT_DIR/model_final.pth once the last stage of the cascade is trained.
    """
    num_stages = cfg.MODEL.DFA.NUM_STAGES
    stages = sorted(stages or range(1, num_stages + 1))
    model, garments = None, None
    for stage in stages:
        if not 1 <= stage <= num_stages:
            raise ValueError(f"stage {stage} not in 1..MODEL.DFA.NUM_STAGES={num_stages}")
        model, garments = train_stage(cfg, stage, resume=resume, garments=garments)
    last = final_checkpoint_path(cfg.OUTPUT_DIR, num_stages)
    if os.path.isfile(last):
        target = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
        tmp = target + ".tmp"
        shutil.copyfile(last, tmp)
        os.replace(tmp, target)
    return model
