"""``KGDetDatasetMapper``: Detectron2's ``DatasetMapper`` that always carries keypoints.

Extends the two documented extension points of ``DatasetMapper`` only: ``from_config`` turns
keypoints on regardless of ``MODEL.KEYPOINT_ON`` and takes the flip indices from the training
datasets' ``keypoint_flip_map``; ``_transform_annotations`` adds ``gt_keypoint_defined``, so the
model can tell "slot does not exist for this garment class" from "exists but unlabelled".
Visibility v in {0, 1, 2} passes through resize and flip unchanged (stock behaviour; points
pushed outside the image become v = 0). Garments without any labelled keypoint are kept (they
still train box and class); degenerate boxes are dropped by Detectron2's usual filter and
counted in the log.

Images are read with :func:`kgdet.data.image_io.decode_image` (Detectron2's ``read_image`` with
exact 8-bit conversion of unusual pixel formats). An image that cannot be read (truncated,
corrupt, missing, unsupported pixel format), and an annotated image whose EXIF orientation
makes Detectron2 mirror or rotate its pixels away from the annotations, is skipped: the mapper
logs the file and the reason, counts it (``num_skipped``) and returns None, which Detectron2's
training loader answers with another image, and :func:`kgdet.data.build_kgdet_test_loader`
leaves out of evaluation (its garments then count as missed).
"""

import copy
import logging
import numpy as np
from typing import Dict, List, Optional, Sequence
import torch

from detectron2.config import configurable
from detectron2.data import DatasetMapper, MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import Keypoints
from detectron2.utils.logger import log_every_n_seconds

from .image_io import ImageReadError, decode_image

__all__ = ["KGDetDatasetMapper", "class_keypoint_mask"]

logger = logging.getLogger(__name__)


def class_keypoint_mask(class_keypoint_slots: Sequence[Sequence[int]], num_keypoints: int):
    """(C, K) bool tensor: entry [c, k] is True iff global slot k exists for class c."""
    mask = torch.zeros(len(class_keypoint_slots), num_keypoints, dtype=torch.bool)
    for c, slots in enumerate(class_keypoint_slots):
        slots = list(slots)
        if slots and (min(slots) < 0 or max(slots) >= num_keypoints):
            raise ValueError(
                f"class_keypoint_slots[{c}] has slots outside [0, {num_keypoints}): "
                f"min {min(slots)}, max {max(slots)}"
            )
        mask[c, slots] = True
    return mask


class KGDetDatasetMapper(DatasetMapper):
    """DatasetMapper for KGDet: keypoints with visibility plus a per-instance slot mask.

    Output ``instances`` (training): ``gt_boxes``, ``gt_classes`` (contiguous),
    ``gt_keypoints`` (``Keypoints``, (N, K, 3), v in {0, 1, 2}) and ``gt_keypoint_defined``
    ((N, K) bool, True where the slot exists for the instance's class).
    """

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        class_keypoint_slots: Sequence[Sequence[int]],
        num_keypoints: int,
        **kwargs,
    ):
        """
        Args:
            class_keypoint_slots: per contiguous class, the global keypoint slots it has
                (metadata ``class_keypoint_slots``).
            num_keypoints: K, the number of global keypoint slots.
            kwargs: arguments of :class:`detectron2.data.DatasetMapper`.
        """
        kwargs.setdefault("use_keypoint", True)
        super().__init__(is_train, **kwargs)
        self.num_keypoints = int(num_keypoints)
        self.keypoint_defined = class_keypoint_mask(class_keypoint_slots, self.num_keypoints)
        self.num_degenerate_dropped = 0
        self.num_skipped = 0

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        ret = super().from_config(cfg, is_train)
        # The flip map comes from the training sets (DATASETS.TEST if none, e.g. eval-only);
        # create_keypoint_hflip_indices also checks that they all agree.
        dataset_names: List[str] = list(cfg.DATASETS.TRAIN) or list(cfg.DATASETS.TEST)
        if not dataset_names:
            raise ValueError(
                "KGDetDatasetMapper needs a dataset in DATASETS.TRAIN or DATASETS.TEST"
            )
        meta = MetadataCatalog.get(dataset_names[0])
        keypoint_names = meta.get("keypoint_names")
        class_keypoint_slots = meta.get("class_keypoint_slots")
        if keypoint_names is None or class_keypoint_slots is None:
            raise ValueError(
                f"Dataset '{dataset_names[0]}' has no keypoint_names / class_keypoint_slots "
                "metadata; register it with kgdet.data (register_deepfashion2_instances, "
                "register_fld_instances) or set them in MetadataCatalog"
            )
        num_keypoints = cfg.MODEL.KGDET.NUM_KEYPOINTS
        if len(keypoint_names) != num_keypoints:
            raise ValueError(
                f"Dataset '{dataset_names[0]}' has {len(keypoint_names)} keypoint_names but "
                f"MODEL.KGDET.NUM_KEYPOINTS is {num_keypoints}; they must be equal"
            )
        num_classes = cfg.MODEL.KGDET.NUM_CLASSES
        if len(class_keypoint_slots) != num_classes:
            raise ValueError(
                f"Dataset '{dataset_names[0]}' has {len(class_keypoint_slots)} classes in "
                f"class_keypoint_slots but MODEL.KGDET.NUM_CLASSES is {num_classes}"
            )
        ret["use_keypoint"] = True
        ret["keypoint_hflip_indices"] = np.asarray(
            utils.create_keypoint_hflip_indices(dataset_names), dtype=np.int64
        )
        ret["class_keypoint_slots"] = class_keypoint_slots
        ret["num_keypoints"] = num_keypoints
        return ret

    def _read_image(self, dataset_dict: Dict) -> Optional[np.ndarray]:
        """The image in ``self.image_format``, or None (logged and counted) when it is skipped."""
        file_name = dataset_dict["file_name"]
        try:
            decoded = decode_image(file_name, format=self.image_format)
        except ImageReadError as e:
            return self._skip(file_name, f"unreadable image: {e.problem}")
        if decoded.info.orientation_changes_pixels and dataset_dict.get("annotations"):
            return self._skip(
                file_name,
                f"{decoded.info.describe_orientation()} makes Detectron2 mirror or rotate the "
                "pixels away from their annotations (stored frame); remove the tag or convert "
                "the data set with datasets/prepare_*.py",
            )
        return decoded.image

    def _skip(self, file_name: str, reason: str) -> None:
        self.num_skipped += 1
        logger.warning(
            f"KGDetDatasetMapper skipped {file_name}: {reason} ({self.num_skipped} image(s) "
            "skipped so far by this loader process)"
        )
        return None

    def __call__(self, dataset_dict: Dict) -> Optional[Dict]:
        """Detectron2's ``DatasetMapper.__call__`` with the image read by :meth:`_read_image`
        (its documented place for custom image loading); None when the image is skipped."""
        dataset_dict = copy.deepcopy(dataset_dict)
        image = self._read_image(dataset_dict)
        if image is None:
            return None
        utils.check_image_size(dataset_dict, image)
        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        image_shape = image.shape[:2]  # h, w
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if self.proposal_topk is not None:
            utils.transform_proposals(
                dataset_dict, image_shape, transforms, proposal_topk=self.proposal_topk
            )
        if not self.is_train:
            dataset_dict.pop("annotations", None)
            dataset_dict.pop("sem_seg_file_name", None)
            return dataset_dict
        if "annotations" in dataset_dict:
            self._transform_annotations(dataset_dict, transforms, image_shape)
        return dataset_dict

    def _transform_annotations(self, dataset_dict, transforms, image_shape):
        # DatasetMapper._transform_annotations, except that the keypoints are stacked into one
        # (N, K, 3) array (Detectron2 builds the tensor from a list of arrays, which is slow and
        # warns) and that annotations without keypoints get K unlabelled slots.
        annos = [
            utils.transform_instance_annotations(
                obj, transforms, image_shape, keypoint_hflip_indices=self.keypoint_hflip_indices
            )
            for obj in dataset_dict.pop("annotations")
            if obj.get("iscrowd", 0) == 0
        ]
        num_annotations = len(annos)
        keypoints = None
        if any("keypoints" in a for a in annos):
            unlabelled = np.zeros((self.num_keypoints, 3), dtype=np.float32)
            keypoints = np.stack(
                [np.asarray(a.pop("keypoints", unlabelled), dtype=np.float32) for a in annos]
            )
        for a in annos:
            if not self.use_instance_mask:
                a.pop("segmentation", None)
        instances = utils.annotations_to_instances(
            annos, image_shape, mask_format=self.instance_mask_format
        )
        if keypoints is not None:
            instances.gt_keypoints = Keypoints(torch.from_numpy(keypoints))
        if self.recompute_boxes:
            instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
        instances = utils.filter_empty_instances(instances)
        dataset_dict["instances"] = instances

        num_dropped = num_annotations - len(instances)
        if num_dropped > 0:
            self.num_degenerate_dropped += num_dropped
            log_every_n_seconds(
                logging.WARNING,
                f"KGDetDatasetMapper dropped {num_dropped} degenerate box(es) in "
                f"{dataset_dict.get('file_name', '?')} ({self.num_degenerate_dropped} so far)",
                n=30,
                name=__name__,
            )

        if not instances.has("gt_keypoints"):
            # Only when no annotation carried keypoints: keep the boxes, all slots unlabelled.
            instances.gt_keypoints = Keypoints(
                torch.zeros(len(instances), self.num_keypoints, 3, dtype=torch.float32)
            )
        classes = instances.gt_classes
        if classes.numel() and int(classes.max()) >= self.keypoint_defined.shape[0]:
            raise ValueError(
                f"{dataset_dict.get('file_name', '?')}: class id {int(classes.max())} outside "
                f"the {self.keypoint_defined.shape[0]} classes of class_keypoint_slots"
            )
        instances.gt_keypoint_defined = self.keypoint_defined[classes]
