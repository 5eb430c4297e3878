"""KGDet meta-architecture: training losses, bad input, inference contract, config checks."""

import unittest
from typing import List
import torch
from torch import nn

from detectron2.data import MetadataCatalog
from detectron2.engine import SimpleTrainer
from detectron2.modeling import build_model
from detectron2.utils.analysis import find_unused_parameters
from detectron2.utils.events import EventStorage

from builders import NUM_CLASSES, NUM_KEYPOINTS
from builders import make_kgdet_input as make_input
from builders import tiny_kgdet_cfg as tiny_cfg
from kgdet.modeling import KGDet
from kgdet.modeling.assigner import CellGrid

# Class blocks of the toy layout: class 0 -> slots 0-1, class 1 -> 2-3, class 2 -> 4-5.
CLASS_SLOTS = [[0, 1], [2, 3], [4, 5]]


def reppoints_overrides(**extra):
    kw = dict(
        IN_FEATURES=["p3", "p4", "p5", "p6", "p7"],
        NUM_STAGES=2,
        COLUMNS=[3],
        POINTS="learned",
        KEYPOINT_BRANCH=False,
        CLS_ON_ALL_STAGES=False,
        POS_NUM=1,
        REFINE_ASSIGNER="max_iou",
        SMOOTH_L1_LOSS_BETA=0.11,
        CLS_STAGE_WEIGHTS=[0.0, 1.0],
        BOX_STAGE_WEIGHTS=[0.5, 1.0],
        KP_STAGE_WEIGHTS=[0.5, 1.0],
    )
    kw.update(extra)
    return kw


def unused_trainable_parameters(model, batch) -> List[str]:
    """Detectron2's DDP guard, restricted to trainable parameters (frozen stem/res2 excluded)."""
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    with EventStorage():
        return [n for n in find_unused_parameters(model, batch) if n in trainable]


def train_step_unused(model, batch):
    """One forward/backward; returns the losses and the trainable parameters without gradient
    (what Detectron2's ``find_unused_parameters`` computes, in the same pass)."""
    model.train()
    model.zero_grad(set_to_none=True)
    with EventStorage():
        losses = model(batch)
    sum(losses.values()).backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    return losses, unused


def train_losses(model, batch):
    model.train()
    with EventStorage() as storage:
        losses = model(batch)
    return losses, storage


class _Registered:
    """Temporary metadata for a unique dataset name (removed on exit)."""

    def __init__(self, name, **metadata):
        self.name = name
        self.metadata = metadata

    def __enter__(self):
        MetadataCatalog.get(self.name).set(**self.metadata)
        return self.name

    def __exit__(self, *exc):
        MetadataCatalog.remove(self.name)


class TestTraining(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(0)

    def test_mixed_batch_trains_all_parameters(self):
        """Full image, empty image (no keypoint field), image smaller than one stride, and a
        garment without labelled keypoints, in one batch: finite losses, no unused parameter."""
        model = build_model(tiny_cfg())
        batch = [
            make_input(100, 120, [[10, 10, 90, 80], [40, 30, 118, 98]], [0, 2]),
            make_input(64, 64),
            make_input(20, 24, [[2, 3, 18, 20]], [1], visible=False),
        ]
        losses, storage = train_losses(model, batch)
        expected = {f"loss_{k}_s{t}" for k in ("cls", "box", "kp") for t in (1, 2, 3)}
        self.assertEqual(set(losses), expected)
        for name, value in losses.items():
            self.assertTrue(torch.isfinite(value), name)
            self.assertGreater(value.item(), 0.0, name)
        # One assignment shared by all stages ("assign once").
        num_pos = [storage.history(f"kgdet/num_pos_s{t}").latest() for t in (1, 2, 3)]
        self.assertEqual(num_pos[0], num_pos[1])
        self.assertEqual(num_pos[0], num_pos[2])
        self.assertGreater(num_pos[0], 0)
        self.assertEqual(unused_trainable_parameters(model, batch), [])

    def test_all_zero_images_without_objects(self):
        model = build_model(tiny_cfg())
        zeros = torch.zeros(3, 64, 96)
        losses, _ = train_losses(model, [make_input(64, 96, image=zeros), make_input(40, 40)])
        for name, value in losses.items():
            self.assertTrue(torch.isfinite(value), name)
        self.assertGreater(losses["loss_cls_s3"].item(), 0.0)  # all-negative targets
        self.assertEqual(losses["loss_box_s3"].item(), 0.0)
        self.assertEqual(losses["loss_kp_s3"].item(), 0.0)
        sum(losses.values()).backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        self.assertTrue(all(g is not None and torch.isfinite(g).all() for g in grads))

    def test_all_zero_image_with_objects(self):
        model = build_model(tiny_cfg())
        sample = make_input(96, 96, [[8, 8, 80, 90]], [1], image=torch.zeros(3, 96, 96))
        losses, _ = train_losses(model, [sample])
        sum(losses.values()).backward()
        self.assertTrue(all(torch.isfinite(v) for v in losses.values()))
        self.assertTrue(
            all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        )

    def test_reppoints_baseline_trains(self):
        model = build_model(tiny_cfg(**reppoints_overrides()))
        batch = [make_input(128, 96, [[10, 10, 90, 120]], [0]), make_input(64, 64)]
        losses, unused = train_step_unused(model, batch)
        self.assertEqual(set(losses), {"loss_box_s1", "loss_cls_s2", "loss_box_s2"})
        self.assertTrue(all(torch.isfinite(v) for v in losses.values()))
        self.assertEqual(unused, [])
        with EventStorage() as storage:
            model(batch)
        self.assertEqual(storage.history("kgdet/num_pos_s1").latest(), 0.5)  # POS_NUM 1

    def test_reppoints_kp_variant(self):
        model = build_model(tiny_cfg(**reppoints_overrides(KEYPOINT_BRANCH=True)))
        losses, _ = train_losses(model, [make_input(96, 96, [[8, 8, 80, 90]], [1])])
        self.assertEqual(
            set(losses), {"loss_box_s1", "loss_kp_s1", "loss_cls_s2", "loss_box_s2", "loss_kp_s2"}
        )
        self.assertTrue(all(torch.isfinite(v) for v in losses.values()))

    def test_keypoint_selection_variant_has_visibility_loss(self):
        # 9 selected keypoints for a 3x3 column need K >= 9.
        model = build_model(tiny_cfg(AGG="selection", COLUMNS=[3], SELECT_TOPK=9, NUM_KEYPOINTS=12))
        batch = [make_input(96, 96, [[8, 8, 80, 90]], [1], num_keypoints=12), make_input(32, 32)]
        losses, unused = train_step_unused(model, batch)
        self.assertTrue({"loss_vis_s1", "loss_vis_s2", "loss_vis_s3"} <= set(losses))
        self.assertTrue(all(torch.isfinite(v) for v in losses.values()))
        self.assertEqual(unused, [])

    def test_keypoint_selection_inference_returns_visibility(self):
        model = build_model(tiny_cfg(AGG="selection", COLUMNS=[3], SELECT_TOPK=9, NUM_KEYPOINTS=12))
        model.test_score_thresh = 0.0  # random weights: keep every candidate
        model.eval()
        with torch.no_grad():
            (out,) = model([{"image": torch.rand(3, 64, 96) * 255, "height": 64, "width": 96}])
        inst = out["instances"]
        self.assertGreater(len(inst), 0)
        vis = inst.pred_keypoint_visibility
        self.assertEqual(tuple(vis.shape), (len(inst), 12))
        self.assertTrue(bool(((vis >= 0) & (vis <= 1)).all()))
        mask = model.class_keypoint_mask[inst.pred_classes]
        self.assertTrue(bool((vis[~mask] == 0).all()))
        self.assertFalse(
            build_model(tiny_cfg())
            .eval()([{"image": torch.rand(3, 64, 96) * 255}])[0]["instances"]
            .has("pred_keypoint_visibility")
        )

    def test_flip_fusion_variant_trains_all_parameters(self):
        names = [f"k{i}" for i in range(NUM_KEYPOINTS)]
        with _Registered(
            "kgdet_test_meta_arch_flip",
            thing_classes=["a", "b", "c"],
            keypoint_names=names,
            keypoint_flip_map=[("k0", "k1"), ("k2", "k3"), ("k4", "k5")],
            class_keypoint_slots=CLASS_SLOTS,
        ) as name:
            cfg = tiny_cfg(FLIP_FUSION=True)
            cfg.DATASETS.TRAIN = (name,)
            model = build_model(cfg)
        batch = [make_input(64, 96, [[8, 8, 80, 60]], [2]), make_input(32, 32)]
        losses, unused = train_step_unused(model, batch)
        self.assertTrue(all(torch.isfinite(v) for v in losses.values()))
        self.assertEqual(unused, [])

    def test_non_finite_loss_stops_training_naming_the_term(self):
        model = build_model(tiny_cfg())
        with torch.no_grad():  # diverged classifier: NaN logits at stage 1
            model.head.stages[0].cls_out.bias.fill_(float("nan"))
        batch = [make_input(64, 64, [[4, 4, 60, 60]], [0])]
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        trainer = SimpleTrainer(model, iter([batch]), optimizer)
        with self.assertRaisesRegex(FloatingPointError, "loss_cls_s1"):
            trainer.train(0, 1)


class TestBackboneLevels(unittest.TestCase):
    def test_p5_only_inference_matches_full_fpn(self):
        model = build_model(tiny_cfg()).eval()
        fpn = model.backbone
        x = torch.randn(1, 3, 96, 128)
        with torch.no_grad():
            only = fpn(x)
            fpn.full_fpn_test = True
            full = fpn(x)
            fpn.full_fpn_test = False
        self.assertEqual(list(only), ["p5"])
        self.assertEqual(list(full), ["p3", "p4", "p5", "p6", "p7"])
        self.assertTrue(torch.allclose(only["p5"], full["p5"]))
        fpn.train()
        self.assertEqual(fpn.levels_to_compute(), ["p5"])

    def test_inactive_fpn_parameters_get_exact_zero_gradient(self):
        model = build_model(tiny_cfg())
        inactive = model.backbone.inactive_parameters()
        names = {n for n, p in model.named_parameters() if any(p is q for q in inactive)}
        self.assertTrue(any("fpn_output3" in n for n in names))
        self.assertTrue(any("top_block.p7" in n for n in names))
        self.assertFalse(any("fpn_output5" in n or "fpn_lateral5" in n for n in names))
        losses, _ = train_losses(model, [make_input(64, 64, [[4, 4, 60, 60]], [0])])
        sum(losses.values()).backward()
        for p in inactive:
            self.assertIsNotNone(p.grad)
            self.assertEqual(p.grad.abs().sum().item(), 0.0)

    def test_multi_level_heads_use_every_level(self):
        model = build_model(tiny_cfg(**reppoints_overrides()))
        self.assertEqual(model.backbone.inactive_parameters(), [])
        model.eval()
        self.assertEqual(len(model.backbone(torch.randn(1, 3, 64, 64))), 5)

    def test_backbone_without_res5_for_a_p4_head(self):
        """RESNETS.OUT_FEATURES without res5 builds no res5 stage and no P6/P7 for a P4 head;
        a head that reads P6/P7 then gets a clear error."""
        cfg = tiny_cfg(IN_FEATURES=["p4"], POS_NUM=9)
        cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4"]
        cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4"]
        model = build_model(cfg)
        names = [n for n, _ in model.named_parameters()]
        self.assertFalse(any("res5" in n or "top_block" in n for n in names))
        self.assertEqual(model.backbone._out_features, ["p3", "p4"])
        losses, _ = train_losses(model, [make_input(64, 96, [[4, 4, 60, 90]], [0])])
        self.assertTrue(all(torch.isfinite(v) for v in losses.values()))
        cfg.MODEL.KGDET.IN_FEATURES = ["p4", "p6"]
        with self.assertRaisesRegex(ValueError, "must include 'res5'"):
            build_model(cfg)


class _FixedHead(nn.Module):
    """A head with known outputs: boxes ±0.25 cell, keypoints at (+0.125, +0.25) cells."""

    num_stages = 1

    def __init__(self, num_classes, num_keypoints):
        super().__init__()
        self.num_classes, self.num_keypoints = num_classes, num_keypoints

    def forward(self, features):
        out = {"cls": [], "kp": [], "pts": [], "box": [], "vis": None}
        for x in features:
            n, _, h, w = x.shape
            out["cls"].append(torch.randn(n, self.num_classes, h, w))
            box = torch.tensor([-0.25, -0.25, 0.25, 0.25]).view(1, 4, 1, 1).expand(n, 4, h, w)
            out["box"].append(box)
            kp = torch.tensor([0.25, 0.125] * self.num_keypoints).view(1, -1, 1, 1)
            out["kp"].append(kp.expand(n, 2 * self.num_keypoints, h, w))
            out["pts"].append(torch.zeros(n, 18, h, w))
        return [out]


class TestInference(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(0)

    def _model(self, **overrides):
        with _Registered(
            "kgdet_test_meta_arch_slots",
            thing_classes=["a", "b", "c"],
            keypoint_names=[f"k{i}" for i in range(NUM_KEYPOINTS)],
            class_keypoint_slots=CLASS_SLOTS,
        ) as name:
            cfg = tiny_cfg(**{"SCORE_THRESH_TEST": 0.0, **overrides})
            cfg.DATASETS.TRAIN = (name,)
            return build_model(cfg).eval()

    def test_keypoint_output_contract_and_rescaling(self):
        model = self._model()
        self.assertFalse(any("class_keypoint_mask" in k for k in model.state_dict()))
        sample = {"image": torch.rand(3, 96, 128) * 255, "height": 192, "width": 256}
        with torch.no_grad():
            result = model([sample])[0]["instances"]
        n = len(result)
        self.assertGreater(n, 0)
        self.assertLessEqual(n, 100)
        self.assertEqual(result.pred_keypoints.shape, (n, NUM_KEYPOINTS, 3))
        for kps, cls, score in zip(result.pred_keypoints, result.pred_classes, result.scores):
            inside = torch.zeros(NUM_KEYPOINTS, dtype=torch.bool)
            inside[CLASS_SLOTS[int(cls)]] = True
            self.assertTrue(torch.all(kps[~inside, 2] == 0))
            self.assertTrue(torch.allclose(kps[inside, 2], score.expand(2)))
        xy = result.pred_keypoints[..., :2]
        self.assertTrue(torch.all(xy[..., 0] <= 256) and torch.all(xy[..., 1] <= 192))
        self.assertTrue(torch.all(xy >= 0))
        boxes = result.pred_boxes.tensor
        self.assertTrue(torch.all(boxes[:, 2] <= 256) and torch.all(boxes[:, 3] <= 192))

    def test_topk_cells_per_level_before_threshold(self):
        model = self._model()
        model.test_topk_candidates = 2
        with torch.no_grad():
            result = model([{"image": torch.rand(3, 128, 128) * 255}])[0]["instances"]
        self.assertGreater(len(result), 0)
        self.assertLessEqual(len(result), 2 * NUM_CLASSES)
        model.max_detections_per_image = 1
        with torch.no_grad():
            result = model([{"image": torch.rand(3, 128, 128) * 255}])[0]["instances"]
        self.assertEqual(len(result), 1)

    def test_empty_result_shapes(self):
        model = self._model(SCORE_THRESH_TEST=1.0)
        with torch.no_grad():
            result = model([{"image": torch.rand(3, 20, 30) * 255}])[0]["instances"]
        self.assertEqual(len(result), 0)
        self.assertEqual(result.pred_keypoints.shape, (0, NUM_KEYPOINTS, 3))

    def test_keypoints_ride_with_their_cell_on_several_levels(self):
        """Every detection's keypoints come from the cell whose box it is (multi-level gather)."""
        base = build_model(tiny_cfg(**reppoints_overrides()))
        model = KGDet(
            backbone=base.backbone,
            head=_FixedHead(NUM_CLASSES, NUM_KEYPOINTS),
            head_in_features=["p3", "p4", "p5", "p6", "p7"],
            num_classes=NUM_CLASSES,
            num_keypoints=NUM_KEYPOINTS,
            point_assigner=base.point_assigner,
            grid_offset=0.5,
            cls_stage_weights=[1.0],
            box_stage_weights=[1.0],
            kp_stage_weights=[1.0],
            test_score_thresh=0.0,
            test_nms_thresh=1.0,
            max_detections_per_image=10000,
            pixel_mean=[0.0, 0.0, 0.0],
            pixel_std=[1.0, 1.0, 1.0],
        ).eval()
        with torch.no_grad():
            result = model([{"image": torch.rand(3, 256, 256) * 255}])[0]["instances"]
        boxes = result.pred_boxes.tensor
        stride = (boxes[:, 2] - boxes[:, 0]) / 0.5
        self.assertEqual(set(stride.round().long().tolist()), {8, 16, 32, 64, 128})
        center = (boxes[:, :2] + boxes[:, 2:]) / 2
        expected = center[:, None, :] + stride[:, None, None] * torch.tensor([0.125, 0.25])
        self.assertTrue(torch.allclose(result.pred_keypoints[..., :2], expected, atol=1e-3))

    def test_decoding_units(self):
        model = self._model()
        grid = CellGrid.build([(3, 4)], [32], 0.0, torch.device("cpu"))
        cell = torch.tensor([1 * 4 + 2])  # row i = 1, column j = 2 -> reference point (64, 32)
        box = model._decode_boxes(torch.tensor([[-1.0, -1.0, 1.0, 0.5]]), grid, cell)
        self.assertEqual(box.tolist(), [[32.0, 0.0, 96.0, 48.0]])
        kp = model._decode_keypoints(torch.tensor([[0.5, -0.5, 1.0, 2.0]]), grid, cell)
        self.assertEqual(kp.tolist(), [[[48.0, 48.0], [128.0, 64.0]]])  # (x, y) from (dy, dx)


class TestConfigChecks(unittest.TestCase):
    def test_stage_weight_length(self):
        with self.assertRaisesRegex(ValueError, r"CLS_STAGE_WEIGHTS.*\[0.5, 1.0\].*NUM_STAGES = 3"):
            build_model(tiny_cfg(CLS_STAGE_WEIGHTS=[0.5, 1.0]))

    def test_in_features_not_produced(self):
        with self.assertRaisesRegex(ValueError, r"IN_FEATURES.*p2.*p3"):
            build_model(tiny_cfg(IN_FEATURES=["p2"]))

    def test_num_keypoints_and_classes_against_dataset(self):
        with _Registered(
            "kgdet_test_meta_arch_check",
            thing_classes=["a", "b", "c"],
            keypoint_names=[f"k{i}" for i in range(7)],
        ) as name:
            cfg = tiny_cfg()
            cfg.DATASETS.TRAIN = (name,)
            with self.assertRaisesRegex(ValueError, r"NUM_KEYPOINTS = 6.*7 keypoint_names"):
                build_model(cfg)
            cfg.MODEL.KGDET.NUM_CLASSES = 4
            with self.assertRaisesRegex(ValueError, r"NUM_CLASSES = 4.*3 thing_classes"):
                build_model(cfg)

    def test_refine_assigner_name(self):
        with self.assertRaisesRegex(ValueError, "REFINE_ASSIGNER"):
            build_model(tiny_cfg(REFINE_ASSIGNER="max-iou"))

    def test_class_mask_falls_back_to_all_slots(self):
        model = build_model(tiny_cfg())
        self.assertTrue(model.class_keypoint_mask.all())
        self.assertEqual(tuple(model.class_keypoint_mask.shape), (NUM_CLASSES, NUM_KEYPOINTS))


def test_training_step_reads_no_tensor_values_on_the_host(monkeypatch):
    """No Tensor.item() in the training forward (each one waits for the device mid-step): the
    loss normaliser stays a tensor, the logged positive count comes from nonzero()'s size."""
    calls = []
    item = torch.Tensor.item

    def counting_item(self):
        calls.append(tuple(self.shape))
        return item(self)

    for overrides in ({}, reppoints_overrides()):
        torch.manual_seed(0)
        model = build_model(tiny_cfg(**overrides)).train()
        batch = [
            make_input(96, 128, [[10, 20, 90, 80], [40, 10, 120, 90]], [0, 2]),
            make_input(96, 128, [[5, 5, 60, 70]], [1]),
        ]
        monkeypatch.setattr(torch.Tensor, "item", counting_item)
        with EventStorage() as storage:
            losses = model(batch)
        monkeypatch.setattr(torch.Tensor, "item", item)
        assert calls == [], overrides
        assert all(torch.isfinite(v) for v in losses.values())
        assert storage.latest()["kgdet/num_pos_s1"][0] > 0
