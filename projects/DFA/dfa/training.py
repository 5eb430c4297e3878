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

Every file a stage writes records the SHA-256 fingerprints of the files it was built on
(``built_on``): ``stage{k}/centres.pth`` the previous stage's ``model_final.pth``; the stage's
checkpoints that file and ``stage{k}/centres.pth``. Skipping or resuming a stage whose recorded
fingerprints no longer match the files on disk (e.g. stage 1 retrained with ``--restart
--stages 1``) is a :class:`StaleStageError` naming both files.
"""

import hashlib
import logging
import os
import shutil
import time
import uuid
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
    check_routing_split,
    cluster_error_magnitudes,
    cluster_space,
    expected_error,
    fit_kmeans,
    offset_magnitudes,
    routing_labels,
    routing_threshold_from_training,
)

__all__ = [
    "stage_dir",
    "centres_path",
    "final_checkpoint_path",
    "require_stage_artifacts",
    "StaleStageError",
    "file_fingerprint",
    "check_stage_chain",
    "last_consistent_stage",
    "check_training_config",
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


class StaleStageError(RuntimeError):
    """A stage's files were built on other earlier-stage files than those now on disk."""


def file_fingerprint(path: str) -> str:
    """SHA-256 (hex) of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _built_on(output_dir: str, paths: List[str]) -> Dict[str, str]:
    """{path relative to ``output_dir``: fingerprint} of the files (so OUTPUT_DIR may move)."""
    return {os.path.relpath(p, output_dir): file_fingerprint(p) for p in paths}


def _check_built_on(
    output_dir: str, path: str, built_on: Optional[Dict[str, str]], what: str
) -> None:
    """Raise StaleStageError if a recorded fingerprint differs from its file on disk."""
    if built_on is None:
        raise StaleStageError(
            f"{path} records no fingerprint of the files it was built on (written by an older "
            f"version?); cannot check that it matches {what}. Retrain from this stage "
            f"(tools/train_dfa.py --restart --stages ...)."
        )
    for relative, recorded in built_on.items():
        source = os.path.join(output_dir, relative)
        current = file_fingerprint(source) if os.path.isfile(source) else "missing"
        if current != recorded:
            raise StaleStageError(
                f"{path} was built on a different {source} (fingerprint {recorded[:12]} "
                f"recorded, {current[:12]} on disk): {source} changed after {path} was made "
                f"(e.g. an earlier stage retrained with --restart). Retrain the later stages "
                f"with --restart --stages <from this stage on>, or restore the earlier file."
            )


def _stage_sources(output_dir: str, stage: int) -> List[str]:
    """The files stage ``stage``'s checkpoints are built on."""
    sources = [centres_path(output_dir, stage)]
    if stage > 1:
        sources.insert(0, final_checkpoint_path(output_dir, stage - 1))
    return sources


def check_stage_chain(output_dir: str, last_stage: int) -> None:
    """Check that stages 1..last_stage's final checkpoints and centres in ``output_dir`` were
    built on each other (the fingerprints they record match the files on disk).

    Raises StaleStageError naming the stale file and the file it no longer matches.
    """
    for stage in range(1, last_stage + 1):
        final = final_checkpoint_path(output_dir, stage)
        if stage > 1 and os.path.isfile(centres_path(output_dir, stage)):
            info = torch.load(centres_path(output_dir, stage), map_location="cpu")
            _check_built_on(
                output_dir,
                centres_path(output_dir, stage),
                info.get("built_on"),
                "the previous stage",
            )
        if os.path.isfile(final):
            built_on = torch.load(final, map_location="cpu").get("built_on")
            _check_built_on(output_dir, final, built_on, "the earlier stage and its centres")


def last_consistent_stage(output_dir: str, last_stage: int):
    """The largest k <= ``last_stage`` whose stages 1..k pass :func:`check_stage_chain`, and
    the StaleStageError of stage k + 1 (None if every stage is consistent)."""
    for stage in range(1, last_stage + 1):
        try:
            check_stage_chain(output_dir, stage)
        except StaleStageError as error:
            return stage - 1, error
    return last_stage, None


def check_training_config(cfg) -> None:
    """Refuse configurations that would train silently wrong (DESIGN.md §8).

    VGG-16 networks without ImageNet weights (MODEL.DFA.PRETRAINED_VGG16): the paper pre-trains
    all its VGG-16s on ImageNet and fine-tunes them (§3, "Training"), so randomly initialised
    ones are not the paper's model. A ValueError unless MODEL.DFA.ALLOW_RANDOM_INIT_VGG16, which
    turns it into a warning.
    """
    d = cfg.MODEL.DFA
    if d.BACKBONE == "VGG16" and not d.PRETRAINED_VGG16:
        message = (
            "MODEL.DFA.BACKBONE is VGG16 but MODEL.DFA.PRETRAINED_VGG16 is empty: the networks "
            "would start from random weights, while the paper fine-tunes ImageNet VGG-16s "
            "(§3, Training). Set MODEL.DFA.PRETRAINED_VGG16 to a local torchvision VGG-16 state "
            "dict (vgg16-397923af.pth), or MODEL.DFA.ALLOW_RANDOM_INIT_VGG16 True to train from "
            "scratch anyway."
        )
        if not d.ALLOW_RANDOM_INIT_VGG16:
            raise ValueError(message)
        logger.warning(message)


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
        networks = [network for _, network in model.named_networks()]
        for network in networks:
            load_vgg16_imagenet(network, state)
        logger.info(f"Copied VGG-16 ImageNet weights from {path} into {len(networks)} nets")
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

    Returns ``gt`` (N, L, 2), ``labelled`` (N, L), ``category`` (N,), ``landmarks``
    (num_stages, N, L, 2), ``labels`` (num_stages, N, K) pseudo-label logits and, with stage 3,
    ``routing`` (N,) bool (all on CPU, in ``garments`` order).
    """
    was_training = model.training
    model.eval()
    gts, masks, cats, marks, labels, routes = [], [], [], [], [], []
    try:
        loader = build_dfa_garment_loader(cfg, garments, batch_size=cfg.SOLVER.IMS_PER_BATCH)
        for batch in loader:
            gts.append(torch.stack([b["landmarks"] for b in batch]))
            masks.append(torch.stack([b["labelled"] for b in batch]))
            cats.append(torch.as_tensor([b["category"] for b in batch], dtype=torch.long))
            if num_stages > 0:
                outs = model.run_cascade(
                    torch.stack([b["image"] for b in batch]), num_stages, cats[-1]
                )
                marks.append(torch.stack([o["landmarks"].cpu() for o in outs]))
                labels.append(torch.stack([o["labels"].cpu() for o in outs]))
                if num_stages >= 3:
                    routes.append(outs[2]["routing"].cpu())
    finally:
        model.train(was_training)
    result = {"gt": torch.cat(gts), "labelled": torch.cat(masks), "category": torch.cat(cats)}
    if num_stages > 0:
        result["landmarks"] = torch.cat(marks, dim=1)
        result["labels"] = torch.cat(labels, dim=1)
    if routes:
        result["routing"] = torch.cat(routes)
    return result


def _cascade_centres(cfg, model, preds: Dict, index: int, stage: int, where: str) -> Dict:
    """k-means state of cascade ``index`` for ``stage`` from its garments' predictions."""
    d = cfg.MODEL.DFA
    cascade = model.cascades[index]
    rows = torch.isin(preds["category"], torch.as_tensor(cascade.categories))
    slots = torch.as_tensor(cascade.slots)
    gt, labelled = preds["gt"][rows][:, slots], preds["labelled"][rows][:, slots]
    prev = preds["landmarks"][-1][rows][:, slots] if stage > 1 else None
    features = cluster_space(stage, gt, labelled, prev, d.DISTANCE_SCALE)
    centres, assignments = fit_kmeans(features, d.NUM_CLUSTERS, d.KMEANS_N_INIT, d.KMEANS_SEED)
    sizes = torch.bincount(assignments, minlength=d.NUM_CLUSTERS)
    info = {"centres": centres, "cluster_sizes": sizes, "num_garments": int(rows.sum())}
    text = f"{d.NUM_CLUSTERS} centres from {len(gt)} garments, cluster sizes {sizes.tolist()}"
    if stage > 1:
        errors = offset_magnitudes(prev, gt, labelled)
        info["train_error_mean"] = float(errors.mean())
        text += f", train error {info['train_error_mean']:.4f}"
        if stage == 2:
            info["cluster_error"] = cluster_error_magnitudes(assignments, errors, d.NUM_CLUSTERS)
    if stage == 3:
        # G(f2) of the training garments, and their true stage-1 errors (for calibration)
        labels = routing_labels(
            preds["labels"][1][rows], model.temperature, model.routing_temperature
        )
        g = expected_error(labels, cascade.cluster_error_2.cpu())
        stage1_errors = offset_magnitudes(preds["landmarks"][0][rows][:, slots], gt, labelled)
        eps, how = routing_threshold_from_training(
            g,
            stage1_errors,
            d.ROUTING_THRESHOLD,
            d.ROUTING_CALIBRATE,
            d.ROUTING_THRESHOLD_QUANTILE,
        )
        easy, hard = check_routing_split(
            g < eps, d.ROUTING_MIN_SHARE, d.ROUTING_ALLOW_DEGENERATE, where
        )
        info.update(routing_threshold=eps, train_easy_fraction=easy, train_hard_fraction=hard)
        text += (
            f", G over training garments {float(g.min()):.4f}..{float(g.max()):.4f}, routing "
            f"eps {eps:.4f} ({how}): branch 1 gets {100 * easy:.1f}%, branch 2 "
            f"{100 * hard:.1f}% of the training garments"
        )
    logger.info(f"{where}{text}")
    return info


def compute_stage_centres(cfg, model, garments: List[Dict], stage: int) -> Dict:
    """k-means centres of ``stage``'s pseudo-label space on the training garments (Table 1),
    for every cascade (``cascades``: one dict per cascade, in model order).

    Stage 2 also gets e(C_k) (mean stage-1 error magnitude per cluster); stage 3 gets the routing
    threshold (DESIGN.md §6) and the training shares of both branches, and raises ValueError if
    one branch would get less than MODEL.DFA.ROUTING_MIN_SHARE of them.
    """
    preds = predict_garments(cfg, model, garments, stage - 1)
    per_cascade = []
    for index, cascade in enumerate(model.cascades):
        where = f"DFA stage {stage}" + (
            f", cascade {index} (clothing types {cascade.categories})" if model.per_type else ""
        )
        per_cascade.append(_cascade_centres(cfg, model, preds, index, stage, where + ": "))
    return {"stage": stage, "cascades": per_cascade}


def _install_centres(model, info: Dict) -> None:
    if len(info["cascades"]) != len(model.cascades):
        raise ValueError(
            f"centres of stage {info['stage']} are for {len(info['cascades'])} cascades, the "
            f"model has {len(model.cascades)} (MODEL.DFA.PER_TYPE_CASCADES changed?)"
        )
    for index, part in enumerate(info["cascades"]):
        model.set_centres(
            info["stage"],
            part["centres"].to(model.device),
            cluster_error=part.get("cluster_error"),
            threshold=part.get("routing_threshold"),
            cascade=index,
        )


def prepare_stage(
    cfg, stage: int, garments: Optional[List[Dict]] = None, reuse_centres: bool = True
):
    """Model ready to train ``stage``: previous stage loaded, this stage's centres installed
    (read from its centres.pth if it exists and ``reuse_centres``, else computed and saved).

    Returns (model, garments). Raises FileNotFoundError if the previous stage is incomplete and
    StaleStageError if reused centres were computed from another previous-stage checkpoint.
    """
    output_dir = cfg.OUTPUT_DIR
    require_stage_artifacts(output_dir, stage)
    model = build_dfa_model(cfg, stage)
    if stage > 1:
        previous_final = final_checkpoint_path(output_dir, stage - 1)
        DetectionCheckpointer(model).load(previous_final)
        ready = all(bool(c.centres_ready[stage - 2]) for c in model.cascades)
        if not bool(model.stage_trained[stage - 2]) or not ready:
            raise RuntimeError(
                f"{previous_final} does not hold a trained "
                f"stage {stage - 1} (checkpoint from another run?); delete it and retrain"
            )
        if cfg.MODEL.DFA.INIT_FROM_PREVIOUS_STAGE:
            for cascade in model.cascades:
                previous = cascade.networks[model.stage_network_names(stage - 1)[0]]
                for name in model.stage_network_names(stage):
                    warm_start_from(cascade.networks[name], previous)
            logger.info(f"DFA stage {stage}: initialised from stage {stage - 1}")
    path = centres_path(output_dir, stage)
    sources = [final_checkpoint_path(output_dir, stage - 1)] if stage > 1 else []
    if reuse_centres and os.path.isfile(path):
        info = torch.load(path, map_location="cpu")
        _check_built_on(output_dir, path, info.get("built_on"), "the previous stage")
        logger.info(f"DFA stage {stage}: loaded centres from {path}")
    else:
        garments = garments if garments is not None else load_train_garments(cfg)
        info = compute_stage_centres(cfg, model, garments, stage)
        info["built_on"] = _built_on(output_dir, sources)
        _atomic_torch_save(info, path)
    _install_centres(model, info)
    return model, garments


class _FingerprintedCheckpointer(DetectionCheckpointer):
    """Detectron2's checkpointer that also stores which files the stage was built on."""

    def __init__(self, *args, built_on: Dict[str, str], **kwargs):
        super().__init__(*args, **kwargs)
        self.built_on = built_on

    def save(self, name: str, **kwargs) -> None:
        super().save(name, built_on=self.built_on, **kwargs)


def train_stage(cfg, stage: int, resume: bool = True, garments: Optional[List[Dict]] = None):
    """Train one stage; returns (model, garments).

    With ``resume``: skipped if its model_final.pth exists, continued from its last periodic
    checkpoint if any, existing centres reused. Without: centres recomputed, training from scratch.
    Skipping or resuming checks the fingerprints of the files the stage was built on
    (StaleStageError naming both files on a mismatch).
    """
    output_dir = cfg.OUTPUT_DIR
    final_path = final_checkpoint_path(output_dir, stage)
    if resume and os.path.isfile(final_path):
        check_stage_chain(output_dir, stage)
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
    built_on = _built_on(output_dir, _stage_sources(output_dir, stage))
    checkpointer = _FingerprintedCheckpointer(
        model, work_dir, optimizer=optimizer, scheduler=scheduler, built_on=built_on
    )
    start_iter = 0
    if resume and checkpointer.has_checkpoint():
        last = checkpointer.get_checkpoint_file()
        last_state = torch.load(last, map_location="cpu")
        _check_built_on(output_dir, last, last_state.get("built_on"), "this stage's inputs")
        start_iter = checkpointer.resume_or_load("", resume=True).get("iteration", -1) + 1
        _install_centres(model, torch.load(centres_path(output_dir, stage), map_location="cpu"))
        logger.info(f"DFA stage {stage}: resuming at iteration {start_iter}")
    elif not resume and os.path.isdir(work_dir):
        # --restart: earlier periodic checkpoints of this stage belong to the old run
        for name in os.listdir(work_dir):
            if name.startswith("checkpoint_") or name == "last_checkpoint":
                os.remove(os.path.join(work_dir, name))
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
    model.routing_counts.zero_()
    trainer.train(start_iter, max_iter)
    if stage == 3:
        easy, hard = model.routing_counts.tolist()
        total = max(easy + hard, 1)
        logger.info(
            f"DFA stage 3 training: branch 1 received {easy} garment crops "
            f"({100 * easy / total:.1f}%), branch 2 {hard} ({100 * hard / total:.1f}%) "
            f"over iterations {start_iter}..{max_iter - 1}"
        )
    model.stage_trained[stage - 1] = True
    record = {
        "model": model.state_dict(),
        "stage": stage,
        "built_on": built_on,
        # makes every training run's file (and so its fingerprint) unique
        "run": {"id": uuid.uuid4().hex, "finished": time.strftime("%Y-%m-%d %H:%M:%S")},
    }
    _atomic_torch_save(record, final_path)
    logger.info(f"DFA stage {stage}: saved {final_path}")
    return model, garments


def train_all_stages(cfg, stages: Optional[List[int]] = None, resume: bool = True):
    """Train ``stages`` (default 1..NUM_STAGES) in order; returns the last model.

    Also writes OUTPUT_DIR/model_final.pth once the last stage of the cascade is trained.
    """
    check_training_config(cfg)
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
        write_atomic(target, lambda tmp: shutil.copyfile(last, tmp))
    return model
