"""Image-level test-time augmentation for KGDet (Detectron2's ``TEST.AUG`` style).

docs/DESIGN.md §8.4 notes that the official "flip_forward" mirrors padded *feature maps* (misaligned
for right-padded images) and that its ``aug_test`` path is broken (§13.8–9); this module is the
clean image-level alternative (docs/DESIGN.md §8.4): the model runs on every augmented copy of the
image that :class:`detectron2.modeling.DatasetMapperTTA` makes (``TEST.AUG.MIN_SIZES`` ×
``TEST.AUG.MAX_SIZE``, plus the mirror of each when ``TEST.AUG.FLIP``); every copy's boxes and
keypoints are mapped back to the original image through the inverse transform (x ↦ W − x for a
mirror) and, for mirrored copies, the keypoint slots are permuted through the dataset's flip map
(slot j of the result = mirrored slot ``flip[j]``). The per-copy detections are then fused:

- ``fusion="nms"`` (default, as Detectron2's ``GeneralizedRCNNWithTTA``): concatenate all
  copies' detections, class-wise NMS at ``MODEL.KGDET.NMS_THRESH_TEST``, keep the top
  ``TEST.DETECTIONS_PER_IMAGE``; keypoints ride along with their box.
- ``fusion="mean"``: the same NMS picks the kept detections; each kept detection is then
  averaged with, from every *other* copy, the same-class detection that overlaps it most (IoU
  >= the NMS threshold): boxes and keypoint x, y score-weighted, score = sum of the members'
  scores / number of copies (a detection found in only one copy is down-weighted, as if
  averaged with a zero). This is the image-level analogue of the paper's flip averaging.

Both fusions are symmetric in the copies, so the result on a mirrored image is the mirror of the
result on the image (exactly so when the width needs no padding).
"""

import copy
import logging
import numpy as np
from typing import Dict, List, Optional, Sequence
import torch
from fvcore.transforms import HFlipTransform
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from detectron2.data.detection_utils import create_keypoint_hflip_indices, read_image
from detectron2.layers import batched_nms
from detectron2.modeling import DatasetMapperTTA
from detectron2.structures import Boxes, Instances, pairwise_iou

__all__ = ["KGDetWithTTA", "unflip_keypoint_slots", "fuse_detections"]

logger = logging.getLogger(__name__)

FUSION_MODES = ("nms", "mean")


def unflip_keypoint_slots(keypoints: torch.Tensor, flip_indices: Sequence[int]) -> torch.Tensor:
    """(N, K, C) keypoints predicted on a mirrored image, coordinates already mirrored back ->
    slots of the original image (slot j takes the mirrored image's slot ``flip_indices[j]``)."""
    index = torch.as_tensor(list(flip_indices), dtype=torch.long, device=keypoints.device)
    return keypoints[:, index]


def fuse_detections(
    per_copy: List[Instances],
    image_size,
    nms_thresh: float,
    max_detections: int,
    fusion: str = "nms",
) -> Instances:
    """Fuse the detections of several augmented copies (already in original coordinates).

    Args:
        per_copy: one ``Instances`` per copy with pred_boxes, scores, pred_classes and
            optionally pred_keypoints (N, K, 3).
        image_size: (H, W) of the fused result.
    """
    if fusion not in FUSION_MODES:
        raise ValueError(f"TTA fusion must be one of {FUSION_MODES}, got '{fusion}'.")
    num_copies = len(per_copy)
    copy_ids = torch.cat(
        [torch.full((len(x),), i, dtype=torch.long) for i, x in enumerate(per_copy)]
    )
    merged = Instances.cat(per_copy) if num_copies > 1 else per_copy[0]
    copy_ids = copy_ids.to(merged.scores.device)
    has_kp = merged.has("pred_keypoints")
    boxes = merged.pred_boxes.tensor
    keep = batched_nms(boxes, merged.scores, merged.pred_classes, nms_thresh)
    keep = keep[:max_detections]
    result = Instances(image_size)
    if fusion == "nms" or len(keep) == 0:
        result.pred_boxes = Boxes(boxes[keep])
        result.scores = merged.scores[keep]
        result.pred_classes = merged.pred_classes[keep]
        if has_kp:
            result.pred_keypoints = merged.pred_keypoints[keep]
        return result

    iou = pairwise_iou(Boxes(boxes[keep]), Boxes(boxes))  # (M, N)
    same_class = merged.pred_classes[keep][:, None] == merged.pred_classes[None, :]
    iou = torch.where(same_class & (iou >= nms_thresh), iou, torch.full_like(iou, -1.0))
    # Members of each kept detection: itself, then from every other copy (ascending) its
    # best-overlapping same-class detection; absent members get weight 0.
    copies = torch.arange(num_copies, device=boxes.device)
    in_copy = copy_ids[None, None, :] == copies[None, :, None]  # (1, C, N)
    best_iou, best = torch.where(in_copy, iou[:, None, :], -1.0).max(dim=2)  # (M, C)
    found = (best_iou >= 0) & (copies[None, :] != copy_ids[keep][:, None])
    members = torch.cat([keep[:, None], best], dim=1)  # (M, 1 + C)
    present = torch.cat([torch.ones_like(found[:, :1]), found], dim=1).to(boxes.dtype)
    weights = merged.scores[members] * present
    total = weights.sum(1)
    w = weights / total[:, None]
    result.pred_boxes = Boxes((boxes[members] * w[..., None]).sum(1))
    result.scores = total / num_copies
    result.pred_classes = merged.pred_classes[keep]
    if has_kp:
        kps = merged.pred_keypoints[members]  # (M, 1 + C, K, 3)
        xy = (kps[..., :2] * w[..., None, None]).sum(1)
        conf = (kps[..., 2:] * present[..., None, None]).sum(1) / num_copies
        result.pred_keypoints = torch.cat([xy, conf], dim=2)
    order = torch.argsort(result.scores, descending=True)
    return result[order]


class KGDetWithTTA(nn.Module):
    """A KGDet (any Detectron2 dense detector returning ``Instances``) with image-level TTA.

    Same input/output format as the model's ``forward`` in eval mode.
    """

    def __init__(
        self,
        cfg,
        model: nn.Module,
        tta_mapper=None,
        batch_size: int = 2,
        fusion: str = "nms",
        keypoint_flip_indices: Optional[Sequence[int]] = None,
    ):
        """
        Args:
            cfg: config with ``TEST.AUG``, ``MODEL.KGDET.NMS_THRESH_TEST``,
                ``TEST.DETECTIONS_PER_IMAGE`` and ``DATASETS.TRAIN`` (whose keypoint flip map
                defines the model's keypoint slots).
            model: the detector (DDP-wrapped models are unwrapped).
            tta_mapper: dataset dict -> list of augmented dicts with "transforms";
                default ``DatasetMapperTTA(cfg)``.
            batch_size: augmented copies per model call.
            fusion: "nms" or "mean" (module docstring).
            keypoint_flip_indices: slot -> mirrored slot; default from ``cfg.DATASETS.TRAIN``.
        """
        super().__init__()
        if isinstance(model, DistributedDataParallel):
            model = model.module
        if fusion not in FUSION_MODES:
            raise ValueError(f"TTA fusion must be one of {FUSION_MODES}, got '{fusion}'.")
        self.cfg = cfg.clone()
        self.model = model
        self.tta_mapper = tta_mapper if tta_mapper is not None else DatasetMapperTTA(cfg)
        self.batch_size = batch_size
        self.fusion = fusion
        if keypoint_flip_indices is None and cfg.TEST.AUG.FLIP:
            keypoint_flip_indices = create_keypoint_hflip_indices(cfg.DATASETS.TRAIN)
        self.keypoint_flip_indices = (
            None if keypoint_flip_indices is None else [int(i) for i in keypoint_flip_indices]
        )
        self.nms_thresh = float(cfg.MODEL.KGDET.NMS_THRESH_TEST)
        self.max_detections = int(cfg.TEST.DETECTIONS_PER_IMAGE)

    def forward(self, batched_inputs: List[Dict]) -> List[Dict]:
        return [self._inference_one_image(self._maybe_read_image(x)) for x in batched_inputs]

    def _maybe_read_image(self, dataset_dict: Dict) -> Dict:
        ret = copy.copy(dataset_dict)
        if "image" not in ret:
            image = read_image(ret.pop("file_name"), self.cfg.INPUT.FORMAT)
            ret["image"] = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if "height" not in ret or "width" not in ret:
            ret["height"], ret["width"] = ret["image"].shape[1:3]
        return ret

    def _inference_one_image(self, inp: Dict) -> Dict:
        orig_shape = (int(inp["height"]), int(inp["width"]))
        augmented = self.tta_mapper(inp)
        tfms = [x.pop("transforms") for x in augmented]
        for x in augmented:  # the model returns results in the augmented image's own frame
            x["height"], x["width"] = x["image"].shape[1:3]
        outputs = []
        for start in range(0, len(augmented), self.batch_size):
            batch = augmented[start : start + self.batch_size]
            outputs.extend(o["instances"] for o in self.model(batch))
        per_copy = [self._to_original(o, t, orig_shape) for o, t in zip(outputs, tfms)]
        fused = fuse_detections(
            per_copy, orig_shape, self.nms_thresh, self.max_detections, self.fusion
        )
        return {"instances": fused}

    def _to_original(self, inst: Instances, tfm, orig_shape) -> Instances:
        """Map one copy's detections back to the original image."""
        inverse = tfm.inverse()
        boxes = inst.pred_boxes.tensor
        device = boxes.device
        out = Instances(orig_shape)
        box_np = inverse.apply_box(boxes.detach().cpu().numpy().astype(np.float64))
        out.pred_boxes = Boxes(torch.as_tensor(box_np, dtype=boxes.dtype, device=device))
        out.scores = inst.scores
        out.pred_classes = inst.pred_classes
        if inst.has("pred_keypoints"):
            kps = inst.pred_keypoints.clone()
            n, k = kps.shape[:2]
            xy = kps[:, :, :2].detach().cpu().numpy().reshape(-1, 2).astype(np.float64)
            xy = inverse.apply_coords(xy).reshape(n, k, 2)
            kps[:, :, :2] = torch.as_tensor(xy, dtype=kps.dtype, device=device)
            num_flips = sum(isinstance(t, HFlipTransform) for t in tfm.transforms)
            if num_flips % 2 == 1:
                flip = self.keypoint_flip_indices
                if flip is None or len(flip) != k:
                    raise ValueError(
                        f"TTA: a mirrored copy has {k} keypoint slots but the flip map has "
                        f"{0 if flip is None else len(flip)} entries; set keypoint_flip_map in "
                        "the training datasets' metadata."
                    )
                kps = unflip_keypoint_slots(kps, self.keypoint_flip_indices)
            out.pred_keypoints = kps
        return out
