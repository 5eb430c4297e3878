"""Tests of the cascade heads: KGDetHead, RepPointsHead, RepPointsKpHead and build_kgdet_head
(docs/DESIGN.md §2-4, §8.4, §10, §14)."""

import math
import pytest
import torch

from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.layers import ShapeSpec

from kgdet import add_kgdet_config
from kgdet.modeling.deform_conv import KGDeformConv
from kgdet.modeling.head import KGDetHead, build_kgdet_head
from kgdet.modeling.point_utils import (
    mirror_boxes,
    mirror_logits,
    mirror_offsets,
    select_points_by_score,
)
from kgdet.modeling.reppoints_head import RepPointsHead, RepPointsKpHead

# Small problem for forward tests: C classes, K keypoints with an involutive flip permutation.
C, K = 3, 12
FLIP = [1, 0, 3, 2, 4, 5, 7, 6, 9, 8, 11, 10]

# name -> (head class, options); the RepPoints heads' defaults are the baselines' structure.
VARIANTS = {
    "kgdet": (KGDetHead, {}),
    "single_column": (KGDetHead, dict(columns=[3])),
    "selection": (KGDetHead, dict(agg="selection", columns=[3], select_topk=9)),
    "selection_multi": (KGDetHead, dict(agg="selection", columns=[1, 3], select_topk=10)),
    "two_stages": (KGDetHead, dict(num_stages=2)),
    "one_stage": (KGDetHead, dict(num_stages=1)),
    "linear_moment": (KGDetHead, dict(moment_param="linear")),
    "reppoints": (RepPointsHead, {}),
    "reppoints_cls_on_all_stages": (RepPointsHead, dict(cls_on_all_stages=True)),
    "reppoints_kp_parallel": (RepPointsKpHead, {}),
    "reppoints_kp_serial": (
        KGDetHead,
        dict(num_stages=2, columns=[3], cls_on_all_stages=False),
    ),
    "flip_fusion": (KGDetHead, dict(flip_fusion=True, keypoint_flip_indices=FLIP)),
    "flip_fusion_selection": (
        KGDetHead,
        dict(agg="selection", columns=[3], flip_fusion=True, keypoint_flip_indices=FLIP),
    ),
    "reppoints_flip_fusion": (RepPointsHead, dict(flip_fusion=True)),
}


def make_head(levels=1, head_class=KGDetHead, **kwargs):
    args = dict(
        input_shape=[ShapeSpec(channels=256, stride=32 * 2**i) for i in range(levels)],
        num_classes=C,
        feat_channels=32,
    )
    if head_class.has_keypoints:
        args["num_keypoints"] = K
    args.update(kwargs)
    return head_class(**args)


def make_variant(name: str, levels: int = 1, **extra):
    head_class, kwargs = VARIANTS[name]
    return make_head(levels=levels, head_class=head_class, **dict(kwargs, **extra))


def features(levels=1, batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    sizes = [(5, 7), (3, 4)]
    return [torch.randn(batch, 256, *sizes[i], generator=gen) for i in range(levels)]


def count_trainable(head_class=KGDetHead, **kwargs) -> int:
    """Trainable parameters of a full-size head (C=13, K=294, 256 ch), built on the meta device."""
    args = dict(input_shape=[ShapeSpec(channels=256, stride=32)], num_classes=13)
    if head_class.has_keypoints:
        args["num_keypoints"] = 294
    args.update(kwargs)
    with torch.device("meta"):
        head = head_class(**args)
    return sum(p.numel() for p in head.parameters() if p.requires_grad)


def training_loss(outputs) -> torch.Tensor:
    """A stand-in for the meta-arch losses: every output the losses read (not "pts")."""
    total = 0.0
    for stage in outputs:
        for key in ("cls", "kp", "box", "vis"):
            for value in stage[key] or []:
                total = total + value.square().mean()
    return total


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_output_contract_and_every_parameter_gets_gradient(name):
    torch.manual_seed(0)
    head_class, kwargs = VARIANTS[name]
    levels = 2 if name == "kgdet" else 1
    head = make_variant(name, levels=levels)
    feats = features(levels)
    outputs = head(feats)
    learned = head_class is not KGDetHead
    stages = kwargs.get("num_stages", 2 if learned else 3)
    assert head.num_stages == stages and len(outputs) == stages
    num_points = head.num_points
    has_kp = head_class is not RepPointsHead
    assert head.has_keypoints == has_kp
    selection = kwargs.get("agg") == "selection"
    for t, stage in enumerate(outputs):
        assert set(stage) == {"cls", "kp", "pts", "box", "vis"}
        expect_cls = t > 0 or kwargs.get("cls_on_all_stages", not learned)
        assert (stage["cls"] is not None) == expect_cls == head.stage_has_cls[t]
        assert (stage["kp"] is not None) == has_kp
        assert (stage["vis"] is not None) == selection
        for lvl, feat in enumerate(feats):
            n, _, h, w = feat.shape
            assert stage["pts"][lvl].shape == (n, 2 * num_points, h, w)
            assert stage["box"][lvl].shape == (n, 4, h, w)
            if expect_cls:
                assert stage["cls"][lvl].shape == (n, C, h, w)
            if has_kp:
                assert stage["kp"][lvl].shape == (n, 2 * K, h, w)
            if selection:
                assert stage["vis"][lvl].shape == (n, K, h, w)
    # DDP without find_unused_parameters: every parameter must be reached by the losses.
    training_loss(outputs).backward()
    missing = [n for n, p in head.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
    zero = [n for n, p in head.named_parameters() if not p.grad.abs().sum() > 0]
    assert not zero, f"parameters with all-zero gradient: {zero}"
    if stages == 1:
        assert not any(isinstance(m, KGDeformConv) for m in head.modules())
    if not head.stage_has_cls[0]:
        assert not hasattr(head.stages[0], "cls_out")


def test_parameter_counts():
    # docs/DESIGN.md §2.4: towers 3,542,016 + stage 1 1,432,391 + 2 × 11,438,919 + λ 2.
    assert count_trainable() == 27_852_247
    # §10 / Table 1 totals minus trainable R-50 res3-5 (23,282,688) and GN-FPN (7,998,976):
    # RepPoints 36,606,003 - 31,281,664 = towers 3,542,016 + pts conv3×3 590,080 + pts 1×1
    # 4,626 + 2 refine DCNs 2 × 589,824 + cls 1×1 3,341 + pts 1×1 4,626 + λ 2.
    assert count_trainable(RepPointsHead) == 36_606_003 - 31_281_664
    # RepPoints-Kp: + kp conv3×3 590,080 + 1×1 151,116 + kp DCN 589,824 + 1×1 151,116.
    assert count_trainable(RepPointsKpHead) == 38_088_139 - 31_281_664
    others = {
        "single-column k=3": count_trainable(columns=[3]),
        "single-column k=5": count_trainable(columns=[5]),
        "single-column k=7": count_trainable(columns=[7]),
        "selection n=9": count_trainable(agg="selection", columns=[3]),
        "RepPoints-Kp serial": count_trainable(num_stages=2, columns=[3], cls_on_all_stages=False),
        "KGDet T=2": count_trainable(num_stages=2),
    }
    for name, value in others.items():
        print(f"head-only trainable parameters, {name}: {value:,}")
    # Serial = towers + kp conv3×3/1×1 + encoder 2K→18 per stage + cls/kp DCN + 1×1s + λ.
    serial = 3_542_016 + 590_080 + 151_116 + 2 * 10_602 + 2 * 589_824 + 3_341 + 151_116 + 2
    assert others["RepPoints-Kp serial"] == serial


def test_init_follows_spec():
    head = make_head()
    prior_bias = -math.log(99.0)
    for stage in head.stages:
        torch.testing.assert_close(stage.cls_out.bias, torch.full((C,), prior_bias))
    assert torch.equal(head.moment_lambda.detach(), torch.zeros(2))
    assert abs(head.stages[1].kp_dcns[0].weight.std().item() - 0.01) < 0.002
    assert torch.equal(head.stages[0].encoder.bias.detach(), torch.zeros(2 * head.num_points))
    linear = make_head(moment_param="linear")
    assert torch.equal(linear.moment_lambda.detach(), torch.full((2,), 2.0))


def test_towers_run_once_per_level_even_with_flip_fusion():
    head = make_variant("flip_fusion", levels=2)
    calls = []
    head.cls_tower.register_forward_hook(lambda m, i, o: calls.append(o.shape[0]))
    head.reg_tower.register_forward_hook(lambda m, i, o: calls.append(o.shape[0]))
    head(features(levels=2, batch=2))
    assert calls == [4, 4, 4, 4]  # 2 levels × 2 towers, each on the plain + flipped batch


@pytest.mark.parametrize("variant", ["kgdet", "reppoints_kp_parallel", "selection"])
def test_stop_gradients_between_stages(variant):
    """GRADIENT_MUL 0: stage-t outputs give zero gradient to Q_{t-1}, ΔK_{t-1}, not to towers."""
    torch.manual_seed(0)
    for gradient_mul in (0.0, 0.1):
        head = make_variant(variant, num_stages=2, gradient_mul=gradient_mul)
        outputs = head(features())
        stage1, stage2 = outputs
        loss2 = training_loss([stage2])
        prev = [stage1["pts"][0], stage1["kp"][0]]
        tower = [head.cls_tower[0].weight, head.reg_tower[0].weight]
        grads = torch.autograd.grad(loss2, prev + tower, allow_unused=True, retain_graph=True)
        for g in grads[2:]:
            assert g is not None and g.abs().sum() > 0
        prev_grads = [torch.zeros(()) if g is None else g.abs().sum() for g in grads[:2]]
        if gradient_mul == 0.0:
            assert all(g == 0 for g in prev_grads)
            # Nor does any layer of stage 1 receive gradient from stage 2.
            stage1_params = list(head.stages[0].parameters())
            g1 = torch.autograd.grad(loss2, stage1_params, allow_unused=True)
            assert all(g is None or g.abs().sum() == 0 for g in g1)
        else:
            # Q_1 reaches stage 2 as damped DCN offsets; ΔK_1 only through Q_1 (none when the
            # points are learned beside the keypoints).
            assert prev_grads[0] > 0
            assert (prev_grads[1] > 0) == (variant != "reppoints_kp_parallel")


def test_flip_fusion_is_mirror_equivariant():
    """fused(F) == mirror(fused(flipW(F))) for any weights, and differs from the plain pass."""
    torch.manual_seed(0)
    plain_head = make_variant("kgdet")
    fused_head = make_variant("flip_fusion")
    fused_head.load_state_dict(plain_head.state_dict())
    feat = features()[0]
    perm = torch.tensor(FLIP)
    with torch.no_grad():
        fused = fused_head([feat])
        fused_of_flipped = fused_head([feat.flip(-1)])
        plain = plain_head([feat])
    for t in range(3):
        a, b = fused[t], fused_of_flipped[t]
        torch.testing.assert_close(a["cls"][0], mirror_logits(b["cls"][0]))
        torch.testing.assert_close(a["kp"][0], mirror_offsets(b["kp"][0], perm))
        torch.testing.assert_close(a["box"][0], mirror_boxes(b["box"][0]))
        # Points are not fused: those of the plain pass.
        torch.testing.assert_close(a["pts"][0], plain[t]["pts"][0])
    assert not torch.allclose(fused[2]["kp"][0], plain[2]["kp"][0])


def test_flip_fusion_selection_mirrors_visibility():
    torch.manual_seed(0)
    head = make_variant("flip_fusion_selection")
    feat = features()[0]
    with torch.no_grad():
        a = head([feat])[-1]
        b = head([feat.flip(-1)])[-1]
    torch.testing.assert_close(a["vis"][0], mirror_logits(b["vis"][0], torch.tensor(FLIP)))


def test_selection_gathers_top_visible_keypoints():
    torch.manual_seed(0)
    head = make_variant("selection")
    with torch.no_grad():
        outputs = head(features())
    for stage in outputs:
        kp, vis, pts = stage["kp"][0], stage["vis"][0], stage["pts"][0]
        expected, idx = select_points_by_score(kp, vis, 9, sort_indices=True)
        torch.testing.assert_close(pts, expected)
        # Direct check at one location: the 9 highest-scoring slots, ascending.
        top = vis[1, :, 2, 3].topk(9).indices.sort().values
        assert torch.equal(idx[1, :, 2, 3], top)
        pairs = kp[1, :, 2, 3].view(K, 2)[top].flatten()
        torch.testing.assert_close(pts[1, :, 2, 3], pairs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(agg="selection", select_topk=9), r"SELECT_TOPK \(9\).*\[3, 5, 7\] -> 83"),
        (dict(agg="selection", columns=[5], select_topk=25), r"SELECT_TOPK \(25\).*\(12\)"),
        (dict(num_stages=1, cls_on_all_stages=False), "NUM_STAGES must be >= 2, got 1"),
        (dict(columns=[3, 4]), r"odd kernel sizes, got \[3, 4\]"),
        (dict(columns=[1]), "gives 1"),
        (dict(moment_param="log"), "'log'"),
        (dict(flip_fusion=True), "needs keypoint_flip_indices"),
        (dict(flip_fusion=True, keypoint_flip_indices=[0, 1]), "2 entries.*is 12"),
        (dict(flip_fusion=True, keypoint_flip_indices=[1, 2, 0] + FLIP[3:]), "own inverse"),
        (dict(agg="pooling"), "AGG must be one of.*'pooling'"),
        (dict(num_keypoints=0), "NUM_KEYPOINTS must be >= 1, got 0"),
        (dict(head_class=RepPointsKpHead, num_keypoints=0), "NUM_KEYPOINTS must be >= 1, got 0"),
        (dict(head_class=RepPointsHead, columns=[2]), r"odd kernel sizes, got \[2\]"),
        (dict(head_class=RepPointsHead, num_stages=1), "NUM_STAGES must be >= 2, got 1"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_head(**kwargs)


def kgdet_cfg(**overrides):
    cfg = get_cfg()
    add_kgdet_config(cfg)
    cfg.MODEL.KGDET.NUM_CLASSES = C
    cfg.MODEL.KGDET.NUM_KEYPOINTS = K
    cfg.MODEL.KGDET.FEAT_CHANNELS = 32
    for key, value in overrides.items():
        setattr(cfg.MODEL.KGDET, key, value)
    return cfg


LEARNED = dict(POINTS="learned", NUM_STAGES=2, COLUMNS=[3], CLS_ON_ALL_STAGES=False)


@pytest.mark.parametrize(
    "overrides, head_class",
    [
        ({}, KGDetHead),
        (dict(AGG="selection", COLUMNS=[3]), KGDetHead),
        (dict(LEARNED, KEYPOINT_BRANCH=False), RepPointsHead),
        (dict(LEARNED, KEYPOINT_BRANCH=True), RepPointsKpHead),
        (dict(LEARNED, POINTS="from_keypoints"), KGDetHead),  # serial RepPoints-Kp
    ],
)
def test_builder_picks_the_head_of_the_config(overrides, head_class):
    head = build_kgdet_head(kgdet_cfg(**overrides), [ShapeSpec(channels=256, stride=32)])
    assert type(head) is head_class
    assert head.num_keypoints == (K if head_class.has_keypoints else 0)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(LEARNED, AGG="selection"), "cannot be combined"),
        (dict(KEYPOINT_BRANCH=False), "KEYPOINT_BRANCH False needs"),
        (dict(POINTS="sampled"), "POINTS must be 'from_keypoints' or 'learned', got 'sampled'"),
        (dict(AGG="selection"), r"SELECT_TOPK \(9\).*\[3, 5, 7\] -> 83"),
        (dict(LEARNED, KEYPOINT_BRANCH=True, NUM_KEYPOINTS=0), "NUM_KEYPOINTS must be >= 1"),
    ],
)
def test_builder_rejects_invalid_combinations(overrides, message):
    with pytest.raises(ValueError, match=message):
        build_kgdet_head(kgdet_cfg(**overrides), [ShapeSpec(channels=256, stride=32)])


def test_reppoints_head_reads_only_its_own_options():
    """KGDet-only keys (keypoints, selection) do not stop a RepPoints head from building."""
    cfg = kgdet_cfg(
        **LEARNED, KEYPOINT_BRANCH=False, NUM_KEYPOINTS=0, SELECT_TOPK=4, FLIP_FUSION=True
    )
    cfg.DATASETS.TRAIN = ()  # no keypoint flip map needed without keypoints
    head = build_kgdet_head(cfg, [ShapeSpec(channels=256, stride=32)])
    assert isinstance(head, RepPointsHead) and head.flip_fusion
    assert head.keypoint_flip_indices.numel() == 0


def test_from_config_reads_cfg_and_flip_metadata():
    cfg = get_cfg()
    add_kgdet_config(cfg)
    cfg.MODEL.KGDET.NUM_CLASSES = 2
    cfg.MODEL.KGDET.NUM_KEYPOINTS = 4
    cfg.MODEL.KGDET.FEAT_CHANNELS = 32
    cfg.MODEL.KGDET.COLUMNS = [3, 5]
    cfg.MODEL.KGDET.NUM_STAGES = 2
    cfg.MODEL.KGDET.FLIP_FUSION = True
    name = "test_head_flip_meta_7f3a"
    MetadataCatalog.get(name).set(
        keypoint_names=["a_left", "a_right", "mid", "b"], keypoint_flip_map=[("a_left", "a_right")]
    )
    cfg.DATASETS.TRAIN = (name,)
    try:
        head = KGDetHead(cfg, [ShapeSpec(channels=256, stride=32)])
    finally:
        MetadataCatalog.remove(name)
    assert head.num_points == 34 and head.num_stages == 2 and head.flip_fusion
    assert head.keypoint_flip_indices.tolist() == [1, 0, 2, 3]
    assert "keypoint_flip_indices" not in head.state_dict()
    outputs = head([torch.randn(1, 256, 3, 4)])
    assert outputs[1]["kp"][0].shape == (1, 8, 3, 4)
