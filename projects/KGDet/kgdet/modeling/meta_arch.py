"""KGDet meta-architecture: a dense detector over the cells of the fed FPN levels.

Shape shorthand: N = images, R = cells over all fed levels, C = classes, K = keypoint slots,
T = stages, P = positive cells of the batch, G = ground-truth objects of the batch.

Training (docs/DESIGN.md §5–§6): one point assignment shared by all stages (or a max-IoU
re-assignment on the previous stage's boxes for the RepPoints baselines, §10); per stage a focal
classification loss, a smooth-L1 box loss and a weighted smooth-L1 keypoint loss, all normalised
by Σ_images max(#positives, 1) and weighted per stage.

Inference (§7): final stage only; per level the top-k cells by max class score, then the score
threshold, class-wise NMS and the per-image cap; boxes and keypoints are decoded only for the
cells that survive (keypoints only for the final detections).
"""

import logging
from typing import Dict, List, Optional, Sequence, Tuple
import torch
from torch import Tensor, nn

from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.modeling.meta_arch.dense_detector import DenseDetector, permute_to_N_HWA_K
from detectron2.structures import ImageList, Instances
from detectron2.utils.events import get_event_storage

from .assigner import IGNORE, CellGrid, MaxIoUAssigner, PointAssigner
from .head import build_kgdet_head
from .losses import KP_NORMS, box_loss, classification_loss, keypoint_loss, visibility_loss
from .postprocess import postprocess_single_image

__all__ = ["KGDet", "class_keypoint_mask_from_metadata"]

logger = logging.getLogger(__name__)

StageOutput = Dict[str, Optional[List[Tensor]]]


@META_ARCH_REGISTRY.register()
class KGDet(DenseDetector):
    """KGDet (AAAI 2021) and the RepPoints / RepPoints-Kp baselines, as one dense detector.

    The head (:class:`KGDetHead`) returns per stage and level class logits, accumulated
    keypoint offsets, informative points and the moment-transform box, all in feature cells
    relative to each cell's reference point ((j + offset)·s, (i + offset)·s).
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        head: nn.Module,
        head_in_features: List[str],
        num_classes: int,
        num_keypoints: int,
        class_keypoint_mask: Optional[Tensor] = None,
        point_assigner: PointAssigner,
        refine_assigner: Optional[MaxIoUAssigner] = None,
        grid_offset: float = 0.0,
        point_base_scale: float = 4.0,
        cls_stage_weights: Sequence[float],
        box_stage_weights: Sequence[float],
        kp_stage_weights: Sequence[float],
        vis_weight: float = 1.0,
        focal_loss_alpha: float = 0.25,
        focal_loss_gamma: float = 2.0,
        smooth_l1_beta: float = 1.0 / 9.0,
        kp_norm: str = "per_instance_x4",
        test_score_thresh: float = 0.05,
        test_topk_candidates: int = 1000,
        test_nms_thresh: float = 0.5,
        max_detections_per_image: int = 100,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        input_format: str = "RGB",
        vis_period: int = 0,
        channels_last: bool = False,
    ):
        """
        Args:
            backbone: produces at least ``head_in_features``.
            head: a :class:`KGDetHead` (or a module with the same output contract and the
                attributes ``num_stages``).
            head_in_features: FPN levels fed to the head, e.g. ``["p5"]``.
            num_classes, num_keypoints: C and K (K is ignored by models without keypoints).
            class_keypoint_mask: (C, K) bool, the slots each class has; keypoint scores are 0
                outside the predicted class's slots. None = every slot for every class.
            point_assigner: stage-1 assignment (and every stage's when ``refine_assigner`` is
                None, KGDet's "assign once").
            refine_assigner: max-IoU assignment of stages t >= 2 on stage t-1's boxes (RepPoints).
            grid_offset: cell reference point offset in cells (0 = official, x = j·s).
            point_base_scale: boxes and keypoints are divided by point_base_scale · s in losses.
            cls_stage_weights, box_stage_weights, kp_stage_weights: one weight per stage.
            vis_weight: visibility-BCE weight (keypoint selection), times the keypoint stage weight.
            focal_loss_alpha, focal_loss_gamma, smooth_l1_beta: loss parameters.
            kp_norm: "per_instance_x4" (keypoint weights of a positive sum to 4) or
                "per_instance" (sum to 1).
            test_score_thresh, test_topk_candidates, test_nms_thresh, max_detections_per_image:
                inference parameters (top-k is per level and counts cells).
            pixel_mean, pixel_std, input_format, vis_period: as in Detectron2's RetinaNet.
            channels_last: keep the weights and the batched images in channels-last (NHWC)
                memory format, a CPU/GPU speed setting that changes no result beyond float
                rounding (``MODEL.KGDET.CHANNELS_LAST``).
        """
        super().__init__(
            backbone, head, head_in_features, pixel_mean=pixel_mean, pixel_std=pixel_std
        )
        num_stages = int(head.num_stages)
        for name, weights in (
            ("CLS_STAGE_WEIGHTS", cls_stage_weights),
            ("BOX_STAGE_WEIGHTS", box_stage_weights),
            ("KP_STAGE_WEIGHTS", kp_stage_weights),
        ):
            if len(weights) != num_stages:
                raise ValueError(
                    f"MODEL.KGDET.{name} = {list(weights)} has {len(weights)} entries but "
                    f"MODEL.KGDET.NUM_STAGES = {num_stages}"
                )
        if kp_norm not in KP_NORMS:
            raise ValueError(
                f"MODEL.KGDET.KP_NORM must be one of {list(KP_NORMS)}, got {kp_norm!r}"
            )
        shapes = backbone.output_shape()
        missing = [f for f in head_in_features if f not in shapes]
        if missing:
            raise ValueError(
                f"MODEL.KGDET.IN_FEATURES = {list(head_in_features)} but the backbone produces "
                f"{sorted(shapes)}"
            )
        self.num_classes = num_classes
        self.num_keypoints = num_keypoints
        self.level_strides = [shapes[f].stride for f in head_in_features]
        self.point_assigner = point_assigner
        self.refine_assigner = refine_assigner
        self.grid_offset = float(grid_offset)
        self.point_base_scale = float(point_base_scale)
        self.cls_stage_weights = [float(w) for w in cls_stage_weights]
        self.box_stage_weights = [float(w) for w in box_stage_weights]
        self.kp_stage_weights = [float(w) for w in kp_stage_weights]
        self.vis_weight = float(vis_weight)
        self.focal_loss_alpha = focal_loss_alpha
        self.focal_loss_gamma = focal_loss_gamma
        self.smooth_l1_beta = smooth_l1_beta
        self.kp_weight_total = KP_NORMS[kp_norm]
        self.test_score_thresh = test_score_thresh
        self.test_topk_candidates = test_topk_candidates
        self.test_nms_thresh = test_nms_thresh
        self.max_detections_per_image = max_detections_per_image
        self.input_format = input_format
        self.vis_period = vis_period
        self.channels_last = bool(channels_last)

        if class_keypoint_mask is None:
            class_keypoint_mask = torch.ones(num_classes, max(num_keypoints, 0), dtype=torch.bool)
        class_keypoint_mask = torch.as_tensor(class_keypoint_mask, dtype=torch.bool)
        if tuple(class_keypoint_mask.shape) != (num_classes, num_keypoints):
            raise ValueError(
                f"class_keypoint_mask has shape {tuple(class_keypoint_mask.shape)}, expected "
                f"(MODEL.KGDET.NUM_CLASSES, MODEL.KGDET.NUM_KEYPOINTS) = "
                f"({num_classes}, {num_keypoints})"
            )
        # A dataset property, not a weight: kept out of checkpoints.
        self.register_buffer("class_keypoint_mask", class_keypoint_mask, persistent=False)
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    def preprocess_image(self, batched_inputs: List[Dict[str, Tensor]]) -> ImageList:
        """Normalise and batch the images (Detectron2's), in channels-last format if enabled."""
        images = super().preprocess_image(batched_inputs)
        if self.channels_last:
            images.tensor = images.tensor.contiguous(memory_format=torch.channels_last)
        return images

    @classmethod
    def from_config(cls, cfg) -> Dict:
        k = cfg.MODEL.KGDET
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        missing = [f for f in k.IN_FEATURES if f not in shapes]
        if missing:
            raise ValueError(
                f"MODEL.KGDET.IN_FEATURES = {list(k.IN_FEATURES)} but the backbone "
                f"({cfg.MODEL.BACKBONE.NAME}) produces {sorted(shapes)}"
            )
        head = build_kgdet_head(cfg, [shapes[f] for f in k.IN_FEATURES])
        num_keypoints = k.NUM_KEYPOINTS if getattr(head, "has_keypoints", True) else 0
        if k.REFINE_ASSIGNER not in ("same", "max_iou"):
            raise ValueError(
                "MODEL.KGDET.REFINE_ASSIGNER must be 'same' or 'max_iou', got "
                f"{k.REFINE_ASSIGNER!r}"
            )
        refine = None
        if k.REFINE_ASSIGNER == "max_iou":
            refine = MaxIoUAssigner(k.REFINE_IOU_THRESHOLDS, k.REFINE_MIN_POS_IOU)
        return {
            "backbone": backbone,
            "head": head,
            "head_in_features": list(k.IN_FEATURES),
            "num_classes": k.NUM_CLASSES,
            "num_keypoints": num_keypoints,
            "class_keypoint_mask": class_keypoint_mask_from_metadata(
                cfg.DATASETS.TRAIN, k.NUM_CLASSES, num_keypoints
            ),
            "point_assigner": PointAssigner(k.POS_NUM, k.POINT_BASE_SCALE),
            "refine_assigner": refine,
            "grid_offset": k.GRID_OFFSET,
            "point_base_scale": k.POINT_BASE_SCALE,
            "cls_stage_weights": list(k.CLS_STAGE_WEIGHTS),
            "box_stage_weights": list(k.BOX_STAGE_WEIGHTS),
            "kp_stage_weights": list(k.KP_STAGE_WEIGHTS),
            "vis_weight": k.VIS_WEIGHT,
            "focal_loss_alpha": k.FOCAL_LOSS_ALPHA,
            "focal_loss_gamma": k.FOCAL_LOSS_GAMMA,
            "smooth_l1_beta": k.SMOOTH_L1_LOSS_BETA,
            "kp_norm": k.KP_NORM,
            "test_score_thresh": k.SCORE_THRESH_TEST,
            "test_topk_candidates": k.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": k.NMS_THRESH_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "input_format": cfg.INPUT.FORMAT,
            "vis_period": cfg.VIS_PERIOD,
            "channels_last": k.CHANNELS_LAST,
        }

    # ---------------------------------------------------------------------------------------
    # cells
    # ---------------------------------------------------------------------------------------
    def _cell_grid(self, features: List[Tensor]) -> CellGrid:
        sizes = [tuple(x.shape[-2:]) for x in features]
        return CellGrid.build(sizes, self.level_strides, self.grid_offset, features[0].device)

    @staticmethod
    def _gather_cells(levels: List[Tensor], img_idx: Tensor, cell_idx: Tensor) -> Tensor:
        """Rows of dense per-level maps at given cells, without transposing whole maps.

        Args:
            levels: per level (N, D, H_l, W_l).
            img_idx, cell_idx: (S,) image index and global cell index (over all levels).

        Returns:
            (S, D) in the order of the given indices.
        """
        if len(levels) == 1:
            return levels[0].flatten(2)[img_idx, :, cell_idx]
        sizes = [x.shape[-2] * x.shape[-1] for x in levels]
        ends = torch.tensor(sizes, device=cell_idx.device).cumsum(0)
        level_of = torch.bucketize(cell_idx, ends, right=True)
        pieces, order = [], []
        start = 0
        for lvl, x in enumerate(levels):
            sel = (level_of == lvl).nonzero().squeeze(1)
            pieces.append(x.flatten(2)[img_idx[sel], :, cell_idx[sel] - start])
            order.append(sel)
            start += sizes[lvl]
        return torch.cat(pieces)[torch.cat(order).argsort()]

    def _decode_boxes(self, box_cells: Tensor, grid: CellGrid, cell_idx: Tensor) -> Tensor:
        """(S, 4) box offsets in cells at ``cell_idx`` -> (S, 4) XYXY input pixels."""
        points = grid.points[cell_idx]
        strides = grid.strides[cell_idx][:, None]
        return points.repeat(1, 2) + strides * box_cells

    def _decode_keypoints(self, kp_cells: Tensor, grid: CellGrid, cell_idx: Tensor) -> Tensor:
        """(S, 2K) yx-interleaved offsets in cells -> (S, K, 2) (x, y) input pixels."""
        offsets_xy = kp_cells.unflatten(1, (-1, 2)).flip(-1)
        points = grid.points[cell_idx][:, None, :]
        strides = grid.strides[cell_idx][:, None, None]
        return points + strides * offsets_xy

    # ---------------------------------------------------------------------------------------
    # training
    # ---------------------------------------------------------------------------------------
    def forward_training(
        self,
        images: ImageList,
        features: List[Tensor],
        predictions: List[StageOutput],
        gt_instances: List[Instances],
    ) -> Dict[str, Tensor]:
        grid = self._cell_grid(features)
        valid = torch.stack(
            [grid.valid_mask(size, self.backbone.size_divisibility) for size in images.image_sizes]
        )  # (N, R)
        targets = self._batch_targets(gt_instances, features[0].device)
        matched = self.label_cells(grid, valid, gt_instances)  # (N, R)

        losses: Dict[str, Tensor] = {}
        for t, out in enumerate(predictions):
            if t > 0 and self.refine_assigner is not None:
                matched = self.label_cells_by_iou(predictions[t - 1], grid, valid, gt_instances)
            losses.update(self.stage_losses(t, out, grid, valid, matched, targets))

        # Parameters the training forward does not use (the FPN levels the head does not read,
        # see KGDetFPN.inactive_parameters) get an exactly-zero gradient, so DDP without
        # find_unused_parameters works; their values never influence an output.
        inactive = getattr(self.backbone, "inactive_parameters", lambda: [])()
        if inactive:
            last = f"loss_box_s{len(predictions)}"
            losses[last] = losses[last] + 0.0 * sum(p.sum() for p in inactive)
        return losses

    def _batch_targets(self, gt_instances: List[Instances], device) -> Dict[str, Tensor]:
        """GT of the batch concatenated: boxes (G, 4), classes (G,), keypoints (G, K, 3) and
        the index offset of each image's first object (N,)."""
        counts = [len(x) for x in gt_instances]
        offsets = torch.tensor([0] + counts[:-1], device=device).cumsum(0)
        boxes = torch.cat([x.gt_boxes.tensor for x in gt_instances]).float()
        classes = torch.cat([x.gt_classes for x in gt_instances]).long()
        if boxes.shape[0] and (classes.min() < 0 or classes.max() >= self.num_classes):
            raise ValueError(
                f"gt_classes must be in [0, {self.num_classes}) (MODEL.KGDET.NUM_CLASSES), got "
                f"values in [{int(classes.min())}, {int(classes.max())}]"
            )
        keypoints = []
        for inst in gt_instances:
            if inst.has("gt_keypoints"):
                kps = inst.gt_keypoints.tensor
                if kps.shape[1] != self.num_keypoints and self.num_keypoints > 0:
                    raise ValueError(
                        f"gt_keypoints have {kps.shape[1]} slots but MODEL.KGDET.NUM_KEYPOINTS is "
                        f"{self.num_keypoints}"
                    )
                keypoints.append(kps.float())
            else:  # e.g. an image without annotations, or a model without keypoints
                keypoints.append(torch.zeros(len(inst), self.num_keypoints, 3, device=device))
        return {
            "offsets": offsets,
            "boxes": boxes,
            "classes": classes,
            "keypoints": torch.cat(keypoints) if self.num_keypoints > 0 else None,
        }

    @torch.no_grad()
    def label_cells(self, grid: CellGrid, valid: Tensor, gt_instances: List[Instances]) -> Tensor:
        """Point assignment (docs/DESIGN.md §5.1), per image. Returns (N, R) matched GT indices
        (per image), ``BACKGROUND`` or ``IGNORE``."""
        return torch.stack(
            [
                self.point_assigner(grid, valid[i], inst.gt_boxes.tensor)
                for i, inst in enumerate(gt_instances)
            ]
        )

    @torch.no_grad()
    def label_cells_by_iou(
        self, previous: StageOutput, grid: CellGrid, valid: Tensor, gt_instances: List[Instances]
    ) -> Tensor:
        """Max-IoU assignment on the previous stage's (detached) boxes (docs/DESIGN.md §10)."""
        box_cells = torch.cat([permute_to_N_HWA_K(x, 4) for x in previous["box"]], dim=1)
        boxes = grid.points.repeat(1, 2)[None] + grid.strides[None, :, None] * box_cells
        return torch.stack(
            [
                self.refine_assigner(boxes[i], valid[i], inst.gt_boxes.tensor)
                for i, inst in enumerate(gt_instances)
            ]
        )

    def stage_losses(
        self,
        t: int,
        out: StageOutput,
        grid: CellGrid,
        valid: Tensor,
        matched: Tensor,
        targets: Dict[str, Tensor],
    ) -> Dict[str, Tensor]:
        """Losses of stage ``t`` (0-based) named ``loss_{cls,box,kp,vis}_s{t+1}`` (§6)."""
        num_images = matched.shape[0]
        pos = (matched >= 0) & valid
        img_idx, cell_idx = pos.nonzero(as_tuple=True)
        gt_idx = matched[img_idx, cell_idx] + targets["offsets"][img_idx]
        pos_per_image = pos.sum(dim=1)
        # N_pos = Σ_images max(#positives, 1) (official normaliser, §6; no EMA), kept on the
        # device: no host synchronisation in the middle of the training step.
        normalizer = pos_per_image.clamp(min=1).sum().to(torch.float32)
        storage = get_event_storage()
        # The number of positives is known on the host from nonzero()'s output size.
        storage.put_scalar(f"kgdet/num_pos_s{t + 1}", img_idx.numel() / num_images)

        losses: Dict[str, Tensor] = {}
        suffix = f"_s{t + 1}"
        if out["cls"] is not None:
            logits = torch.cat([permute_to_N_HWA_K(x, self.num_classes) for x in out["cls"]], 1)
            labels = torch.full_like(matched, self.num_classes)
            labels[img_idx, cell_idx] = targets["classes"][gt_idx]
            scored = valid & (matched != IGNORE)
            loss = classification_loss(
                logits[scored],
                labels[scored],
                self.num_classes,
                self.focal_loss_alpha,
                self.focal_loss_gamma,
            )
            losses["loss_cls" + suffix] = loss * (self.cls_stage_weights[t] / normalizer)

        norm = self.point_base_scale * grid.strides[cell_idx]
        pred_boxes = self._decode_boxes(
            self._gather_cells(out["box"], img_idx, cell_idx), grid, cell_idx
        )
        loss = box_loss(pred_boxes, targets["boxes"][gt_idx], norm, self.smooth_l1_beta)
        losses["loss_box" + suffix] = loss * (self.box_stage_weights[t] / normalizer)

        if out["kp"] is not None:
            gt_kps = targets["keypoints"][gt_idx]
            pred_kps = self._decode_keypoints(
                self._gather_cells(out["kp"], img_idx, cell_idx), grid, cell_idx
            )
            loss = keypoint_loss(pred_kps, gt_kps, norm, self.smooth_l1_beta, self.kp_weight_total)
            losses["loss_kp" + suffix] = loss * (self.kp_stage_weights[t] / normalizer)
            if out.get("vis") is not None:
                vis_logits = self._gather_cells(out["vis"], img_idx, cell_idx)
                loss = visibility_loss(vis_logits, gt_kps[..., 2])
                weight = self.vis_weight * self.kp_stage_weights[t] / normalizer
                losses["loss_vis" + suffix] = loss * weight
        return losses

    # ---------------------------------------------------------------------------------------
    # inference
    # ---------------------------------------------------------------------------------------
    def forward_inference(
        self, images: ImageList, features: List[Tensor], predictions: List[StageOutput]
    ) -> List[Instances]:
        final = predictions[-1]
        if final["cls"] is None:
            raise ValueError("the final stage has no classifier; cannot run inference")
        grid = self._cell_grid(features)
        return [
            self.inference_single_image(final, grid, i, image_size)
            for i, image_size in enumerate(images.image_sizes)
        ]

    def inference_single_image(
        self, final: StageOutput, grid: CellGrid, img: int, image_size: Tuple[int, int]
    ) -> Instances:
        """Detections of image ``img`` from the final stage's dense outputs (§7); see
        :func:`~kgdet.modeling.postprocess.postprocess_single_image` (shared with the export)."""
        return postprocess_single_image(self, final, grid.points, grid.strides, image_size, img=img)


def class_keypoint_mask_from_metadata(
    dataset_names: Sequence[str], num_classes: int, num_keypoints: int
) -> Optional[Tensor]:
    """(C, K) bool mask of each class's keypoint slots from the first training dataset's
    ``class_keypoint_slots`` metadata; checks NUM_CLASSES / NUM_KEYPOINTS against its
    ``thing_classes`` / ``keypoint_names``. None (all slots) when there is no such metadata."""
    if len(dataset_names) == 0 or num_keypoints == 0:
        return None
    name = dataset_names[0]
    if name not in MetadataCatalog.list():
        return None
    meta = MetadataCatalog.get(name)
    thing_classes = getattr(meta, "thing_classes", None)
    if thing_classes is not None and len(thing_classes) != num_classes:
        raise ValueError(
            f"MODEL.KGDET.NUM_CLASSES = {num_classes} but dataset '{name}' has "
            f"{len(thing_classes)} thing_classes"
        )
    keypoint_names = getattr(meta, "keypoint_names", None)
    if keypoint_names is not None and len(keypoint_names) != num_keypoints:
        raise ValueError(
            f"MODEL.KGDET.NUM_KEYPOINTS = {num_keypoints} but dataset '{name}' has "
            f"{len(keypoint_names)} keypoint_names"
        )
    slots = getattr(meta, "class_keypoint_slots", None)
    if slots is None:
        logger.warning(
            "Dataset '%s' has no class_keypoint_slots metadata: every keypoint slot is scored "
            "for every class",
            name,
        )
        return None
    if len(slots) != num_classes:
        raise ValueError(
            f"dataset '{name}' has {len(slots)} entries in class_keypoint_slots but "
            f"MODEL.KGDET.NUM_CLASSES = {num_classes}"
        )
    mask = torch.zeros(num_classes, num_keypoints, dtype=torch.bool)
    for c, class_slots in enumerate(slots):
        class_slots = list(class_slots)
        if any(s < 0 or s >= num_keypoints for s in class_slots):
            raise ValueError(
                f"dataset '{name}': class_keypoint_slots[{c}] has slots outside "
                f"[0, {num_keypoints}) (MODEL.KGDET.NUM_KEYPOINTS)"
            )
        mask[c, class_slots] = True
    return mask
