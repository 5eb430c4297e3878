"""KGDet's data loaders: Detectron2's, on lazy DeepFashion2 dataset dicts.

``build_kgdet_train_loader`` is ``build_detection_train_loader`` on
:func:`kgdet.data.compact_dicts.get_kgdet_dataset_dicts`: a DeepFashion2 training set stays a
memory-mapped :class:`~kgdet.data.compact_dicts.CompactDatasetDicts` (Detectron2 would copy
every record into a list and pickle it per rank), so its annotations exist once per machine.

``build_kgdet_test_loader`` is Detectron2's test loader that leaves skipped images out.

Detectron2's ``MapDataset`` answers a mapper that returns None (an image
:class:`~kgdet.data.KGDetDatasetMapper` cannot read) with a *random other* image. That is what
training wants, but in evaluation it would score one image twice and another not at all. Here
each image is mapped exactly once; skipped images are dropped from their batch, counted, and
logged with the total at the end of the pass.
"""

import logging
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence
import torch.utils.data as torchdata

from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.data.samplers import InferenceSampler

from .compact_dicts import get_kgdet_dataset_dicts

__all__ = ["build_kgdet_train_loader", "build_kgdet_test_loader", "SkippingDataLoader"]

logger = logging.getLogger(__name__)


class _MapOnce(torchdata.Dataset):
    """Map-style dataset: ``mapper(dicts[i])``, None when the mapper skips the image."""

    def __init__(self, dicts: Sequence[Dict], mapper: Callable[[Dict], Optional[Dict]]):
        self._dicts = dicts
        self._mapper = mapper

    def __len__(self) -> int:
        return len(self._dicts)

    def __getitem__(self, idx: int) -> Any:
        out = self._mapper(self._dicts[idx])
        return out if out is not None else {"__skipped__": self._dicts[idx].get("file_name")}


class SkippingDataLoader:
    """Iterates a test ``DataLoader`` and removes skipped images from every batch.

    ``len()`` is the loader's number of batches (what ``inference_on_dataset`` uses for its
    ETA); empty batches are not yielded. ``skipped`` lists the file names left out.
    """

    def __init__(self, loader: torchdata.DataLoader, dataset_name: str):
        self.loader = loader
        self.dataset_name = dataset_name
        self.skipped: List[str] = []

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[List[Dict]]:
        self.skipped = []
        for batch in self.loader:
            kept = [d for d in batch if "__skipped__" not in d]
            self.skipped += [d["__skipped__"] for d in batch if "__skipped__" in d]
            if kept:
                yield kept
        if self.skipped:
            logger.warning(
                f"'{self.dataset_name}': {len(self.skipped)} image(s) could not be used and were "
                "left out of inference (their ground-truth garments count as missed): "
                + ", ".join(self.skipped[:10])
                + (" ..." if len(self.skipped) > 10 else "")
            )


def build_kgdet_test_loader(
    cfg, dataset_name: str, mapper: Callable[[Dict], Optional[Dict]]
) -> SkippingDataLoader:
    """Detectron2's ``build_detection_test_loader`` for ``dataset_name`` (InferenceSampler,
    batch size 1, ``cfg.DATALOADER.NUM_WORKERS``) where a mapper returning None skips the
    image instead of replacing it; see the module docstring."""
    dicts = get_kgdet_dataset_dicts([dataset_name], filter_empty=False)
    dataset = _MapOnce(dicts, mapper)
    loader = build_detection_test_loader(
        dataset=dataset,
        mapper=None,
        sampler=InferenceSampler(len(dataset)),
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )
    return SkippingDataLoader(loader, dataset_name)


def build_kgdet_train_loader(cfg, mapper: Callable[[Dict], Optional[Dict]]) -> torchdata.DataLoader:
    """Detectron2's ``build_detection_train_loader(cfg, mapper=mapper)`` with the datasets of
    ``cfg.DATASETS.TRAIN`` read by :func:`~kgdet.data.compact_dicts.get_kgdet_dataset_dicts`
    (same filters and config keys as Detectron2's ``_train_loader_from_config``)."""
    dataset = get_kgdet_dataset_dicts(
        cfg.DATASETS.TRAIN,
        filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
        min_keypoints=(
            cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0
        ),
        proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
    )
    return build_detection_train_loader(cfg, mapper=mapper, dataset=dataset)
