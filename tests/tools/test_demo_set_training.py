"""A few iterations on the DeepFashion2 demo set reduce the loss (294 keypoints)."""

import pytest
import torch

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

import kgdet
from kgdet.data import KGDetDatasetMapper, register_deepfashion2_instances

pytestmark = pytest.mark.slow  # trains on the DeepFashion2 demo images

DATASET = "kgdet_test_demo_set_training"


@pytest.fixture
def demo_dataset(df2_demo_dir):
    register_deepfashion2_instances(
        DATASET, str(df2_demo_dir / "annotations.json"), str(df2_demo_dir / "image")
    )
    yield DATASET
    DatasetCatalog.remove(DATASET)
    MetadataCatalog.remove(DATASET)


def test_few_iterations_on_demo_images_reduce_the_loss(demo_dataset):
    cfg = get_cfg()
    kgdet.add_kgdet_config(cfg)
    cfg.merge_from_file("configs/kgdet_synth.yaml")
    cfg.merge_from_list(
        [
            "DATASETS.TRAIN", f"('{demo_dataset}',)", "DATASETS.TEST", f"('{demo_dataset}',)",
            "MODEL.KGDET.NUM_CLASSES", "13", "MODEL.KGDET.NUM_KEYPOINTS", "294",
            "MODEL.FPN.OUT_CHANNELS", "64", "MODEL.KGDET.FEAT_CHANNELS", "64",
            "INPUT.MIN_SIZE_TRAIN", "(160,)", "INPUT.MAX_SIZE_TRAIN", "160",
            "INPUT.RANDOM_FLIP", "none",
        ]
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    mapper = KGDetDatasetMapper(cfg, is_train=True)
    batch = [mapper(d) for d in DatasetCatalog.get(demo_dataset)[:2]]
    assert batch[0]["instances"].gt_keypoints.tensor.shape[1:] == (294, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = []
    with EventStorage():
        for _ in range(8):
            loss = sum(model(batch).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.02, losses
