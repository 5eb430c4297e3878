"""DFA meta-architecture: stage outputs, training losses per stage, readiness checks, routing,
warm start, data mappers and the VGG-16 config."""

import numpy as np
from pathlib import Path
import cv2
import pytest
import torch

from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import BoxMode
from detectron2.utils.events import EventStorage

from builders import DFA_NUM_CLUSTERS
from builders import tiny_dfa_cfg as tiny_cfg
from dfa import DFACropMapper, DFAImageMapper, add_dfa_config
from dfa.data import garment_records
from dfa.landmarks import FLD_CLASS_SLOTS
from dfa.network import warm_start_from

REPO_ROOT = Path(__file__).resolve().parents[2]
L, K = 8, DFA_NUM_CLUSTERS


def ready(model, stages=(1, 2, 3)):
    """Pretend the given stages are trained and their centres set (random centres)."""
    for s in stages:
        buffer = getattr(model.cascades[0], f"centres_{s}")
        model.set_centres(s, torch.randn_like(buffer) * 10, cluster_error=torch.rand(K))
        model.stage_trained[s - 1] = True
    return model


def crop_batch(n, size=32):
    gen = torch.Generator().manual_seed(0)
    labelled = torch.ones(n, L, dtype=torch.bool)
    labelled[0, 3] = False
    return [
        {
            "image": torch.randint(0, 255, (3, size, size), dtype=torch.uint8, generator=gen),
            "landmarks": torch.rand(L, 2, generator=gen) - 0.5,
            "labelled": labelled[i],
            "visibility": torch.tensor([0, 1, 2, 0, -1, -1, 0, 0]),
        }
        for i in range(n)
    ]


def test_every_stage_output_shapes():
    model = build_model(tiny_cfg()).eval()
    crops = torch.randint(0, 255, (5, 3, 32, 32), dtype=torch.uint8)
    outs = model.run_cascade(crops, 3)
    assert len(outs) == 3
    for out in outs:
        assert out["landmarks"].shape == (5, L, 2)
        assert out["positions"].shape == (5, L, 2)
        assert out["visibility"].shape == (5, L, 3)
        assert out["labels"].shape == (5, K)
    assert outs[2]["routing"].shape == (5,) and outs[2]["routing"].dtype == torch.bool
    # Refiners start as the identity (zero-initialised offset layer).
    assert torch.equal(outs[1]["landmarks"], outs[0]["landmarks"])

    image = torch.randint(0, 255, (3, 60, 80), dtype=torch.uint8)
    boxes = torch.tensor([[10.0, 5.0, 50.0, 55.0], [0.0, 0.0, 80.0, 60.0], [30, 30, 30, 31]])
    results = model(
        [{"image": image, "boxes": boxes}, {"image": image, "boxes": torch.zeros(0, 4)}]
    )
    assert results[0]["aligned_keypoints"].shape == (3, L, 2)
    assert len(results[0]["aligned_keypoints_per_stage"]) == 3
    assert all(p.shape == (3, L, 2) for p in results[0]["aligned_keypoints_per_stage"])
    assert results[0]["landmark_visibility"].shape == (3, L, 3)
    assert torch.allclose(results[0]["landmark_visibility"].sum(-1), torch.ones(3, L))
    assert results[0]["routing"].shape == (3,)
    assert results[1]["aligned_keypoints"].shape == (0, L, 2)
    # Stage landmarks are in image pixels, inside/near their box for an untrained model.
    first = results[0]["aligned_keypoints_per_stage"][0][0]
    assert ((first[:, 0] > 0) & (first[:, 0] < 60)).all()
    model.test_stages = 1
    assert len(model([{"image": image, "boxes": boxes}])[0]["aligned_keypoints_per_stage"]) == 1


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_training_losses_per_stage_touch_only_that_stage(stage):
    model = ready(build_model(tiny_cfg(**{"MODEL.DFA.TRAIN_STAGE": stage}))).train()
    assert all(not model.cascades[0].networks[f"stage{s}"].training for s in range(1, stage))
    with EventStorage(0):
        losses = model(crop_batch(6))
    assert set(losses) == {"loss_positions", "loss_visibility", "loss_labels"}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    sum(losses.values()).backward()
    with_grads = {
        name
        for name, net in model.cascades[0].networks.items()
        if any(p.grad is not None for p in net.parameters())
    }
    if stage < 3:
        assert with_grads == {f"stage{stage}"}
    else:  # only the branch(es) that received garments
        assert with_grads and with_grads <= {"stage3_easy", "stage3_hard"}


def test_stage2_refuses_without_stage1_weights_and_centres():
    model = build_model(tiny_cfg(**{"MODEL.DFA.TRAIN_STAGE": 2})).train()
    with EventStorage(0), pytest.raises(RuntimeError, match="stage-1 weights are not loaded"):
        model(crop_batch(2))
    model.stage_trained[0] = True
    with EventStorage(0), pytest.raises(RuntimeError, match="cluster centres are not set"):
        model(crop_batch(2))
    ready(model, stages=(2,))
    with EventStorage(0):
        assert "loss_positions" in model(crop_batch(2))


def test_routing_sends_garments_to_the_branch_the_threshold_says():
    model = build_model(tiny_cfg()).eval()
    model.set_centres(2, torch.zeros(K, 2 * L), cluster_error=torch.tensor([0.1, 0.1, 0.1, 0.9]))
    head = model.cascades[0].networks["stage2"].label_head
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 50.0]))  # f2 ~ one-hot on cluster 3: G = 0.9
    crops = torch.randint(0, 255, (4, 3, 32, 32), dtype=torch.uint8)
    for threshold, easy in ((1.0, True), (0.3, False)):
        model.cascades[0].routing_threshold.fill_(threshold)
        outs = model.run_cascade(crops, 3)
        assert outs[2]["routing"].tolist() == [easy] * 4
        branch = "stage3_easy" if easy else "stage3_hard"
        other = "stage3_hard" if easy else "stage3_easy"
        with torch.no_grad():
            for net in (model.cascades[0].networks[branch], model.cascades[0].networks[other]):
                net.position_head.bias.copy_(
                    torch.full((2 * L,), 0.01 if net is model.cascades[0].networks[branch] else 5.0)
                )
        outs = model.run_cascade(crops, 3)
        delta = outs[2]["landmarks"] - outs[1]["landmarks"]
        assert torch.allclose(delta, torch.full_like(delta, 0.01), atol=1e-5)


def test_warm_start_copies_previous_stage():
    cfg = tiny_cfg(**{"MODEL.DFA.PREV_INPUT": ["heatmap", "coords"]})
    model = build_model(cfg).eval()
    with torch.no_grad():
        model.cascades[0].networks["stage1"].position_head.bias.fill_(0.2)
    warm_start_from(model.cascades[0].networks["stage2"], model.cascades[0].networks["stage1"])
    s1, s2 = model.cascades[0].networks["stage1"], model.cascades[0].networks["stage2"]
    assert torch.equal(s2.trunk[0].weight[:, :3], s1.trunk[0].weight)
    assert s2.trunk[0].weight[:, 3:].abs().sum() == 0
    assert s2.position_head.weight.abs().sum() == 0  # offsets start at zero
    crops = torch.randint(0, 255, (3, 3, 32, 32), dtype=torch.uint8)
    outs = model.run_cascade(crops, 2)
    assert torch.allclose(outs[1]["visibility"], outs[0]["visibility"], atol=1e-5)


def test_vgg16_config_builds_on_cpu(capsys, monkeypatch):
    # Random initialisation of 4 x 134M weights takes many CPU seconds and is not what this test
    # checks (the architecture and its size): skip the default init of convs and linears.
    monkeypatch.setattr(torch.nn.Linear, "reset_parameters", lambda self: None)
    monkeypatch.setattr(torch.nn.Conv2d, "reset_parameters", lambda self: None)
    cfg = get_cfg()
    add_dfa_config(cfg)
    cfg.merge_from_file(str(REPO_ROOT / "configs" / "dfa_fld_VGG16.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    model = build_model(cfg)
    assert sorted(model.cascades[0].networks) == ["stage1", "stage2", "stage3_easy", "stage3_hard"]
    counts = {
        n: sum(p.numel() for p in net.parameters()) for n, net in model.cascades[0].networks.items()
    }
    total = sum(counts.values())
    with capsys.disabled():
        print(
            f"\nDFA VGG-16 x4 parameters: {total:,} "
            + str({k: f"{v:,}" for k, v in counts.items()})
        )
    # VGG-16 without its 1000-way layer is ~134M parameters; heads and extra inputs add ~0.1M.
    assert all(134_000_000 < c < 135_000_000 for c in counts.values())
    assert model.cascades[0].networks["stage2"].trunk[0].in_channels == 3 + L
    assert model.crop_size == 224 and model.num_clusters == 20


# ---- data ----------------------------------------------------------------------------------------
def _write_image(path, h=60, w=80):
    image = np.zeros((h, w, 3), np.uint8)
    image[10:50, 20:60] = (40, 160, 220)
    cv2.imwrite(str(path), image)


def _annotation(category, box_xyxy, fld_vis):
    x1, y1, x2, y2 = box_xyxy
    kps = []
    for slot in range(L):
        defined = slot in FLD_CLASS_SLOTS[category]
        v = 0 if not defined or fld_vis[slot] == 2 else (2 if fld_vis[slot] == 0 else 1)
        x = x1 + (x2 - x1) * (0.2 + 0.08 * slot) if v else 0
        y = y1 + (y2 - y1) * (0.1 + 0.1 * slot) if v else 0
        kps += [x, y, v]
    return {
        "bbox": [x1, y1, x2 - x1, y2 - y1],
        "bbox_mode": BoxMode.XYWH_ABS,
        "category_id": category,
        "keypoints": kps,
        "fld_visibility": list(fld_vis),
    }


def test_garment_records_skip_and_count(tmp_path, caplog):
    path = tmp_path / "a.jpg"
    _write_image(path)
    ok = _annotation(0, (20, 10, 60, 50), [0, 0, 1, 0, 0, 0, 0, 2])
    degenerate = _annotation(1, (20, 10, 20.5, 50), [0] * 8)
    truncated = _annotation(1, (20, 10, 60, 50), [2] * 8)
    dicts = [
        {
            "file_name": str(path),
            "height": 60,
            "width": 80,
            "image_id": 1,
            "annotations": [ok, degenerate, truncated],
        }
    ]
    with caplog.at_level("WARNING"):
        records = garment_records(dicts, FLD_CLASS_SLOTS, L, 2.0, "tiny")
    assert [r["annotation_index"] for r in records] == [0]
    assert "skipped 1 garments (degenerate box)" in caplog.text
    assert "skipped 1 garments (all landmarks truncated or unlabelled)" in caplog.text
    bad = [{**dicts[0], "annotations": [dict(ok, category_id=5)]}]
    with pytest.raises(ValueError, match="a.jpg.*category_id 5"):
        garment_records(bad, FLD_CLASS_SLOTS, L, 2.0)


def test_crop_mapper_flip_and_image_mapper_rows(tmp_path):
    path = tmp_path / "a.jpg"
    _write_image(path)
    ann = _annotation(0, (20, 10, 60, 50), [0, 0, 1, 0, 0, 0, 0, 2])
    record = garment_records(
        [{"file_name": str(path), "height": 60, "width": 80, "image_id": 1, "annotations": [ann]}],
        FLD_CLASS_SLOTS,
        L,
        2.0,
    )[0]
    common = dict(
        crop_size=32, box_expand=1.0, image_format="BGR", flip_indices=[1, 0, 3, 2, 5, 4, 7, 6]
    )
    plain = DFACropMapper(is_train=False, **common)(record)
    assert plain["image"].shape == (3, 32, 32) and plain["image"].dtype == torch.uint8
    assert plain["landmarks"].shape == (L, 2)
    assert plain["visibility"].tolist() == [0, 0, 1, 0, -1, -1, 0, 2]
    np.random.seed(1)
    flipper = DFACropMapper(is_train=True, random_flip=True, **common)
    flipped = next(
        out
        for out in (flipper(record) for _ in range(20))
        if not torch.equal(out["image"], plain["image"])
    )
    assert torch.equal(flipped["image"], plain["image"].flip(-1))
    perm = [1, 0, 3, 2, 5, 4, 7, 6]
    assert flipped["visibility"].tolist() == plain["visibility"][perm].tolist()
    expected = plain["landmarks"][perm] * torch.tensor([-1.0, 1.0])
    mask = flipped["labelled"]
    assert torch.allclose(flipped["landmarks"][mask], expected[mask], atol=1e-6)

    degenerate = dict(ann, bbox=[30, 30, 0, 0])
    image_dict = {
        "file_name": str(path),
        "height": 60,
        "width": 80,
        "image_id": 1,
        "annotations": [ann, degenerate],
    }
    mapper = DFAImageMapper(crop_size=32, box_expand=1.2, image_format="BGR")
    out = mapper(image_dict)
    assert out["crops"].shape == (2, 3, 32, 32) and out["boxes"].shape == (2, 4)
    assert mapper.num_degenerate == 1


# ---- per-type cascades ---------------------------------------------------------------------------
def test_per_type_cascades_predict_only_their_landmarks():
    model = build_model(tiny_cfg(**{"MODEL.DFA.PER_TYPE_CASCADES": True})).eval()
    assert [c.slots for c in model.cascades] == [sorted(s) for s in FLD_CLASS_SLOTS]
    # 12 / 8 / 16 position outputs (upper / lower / full body), heatmaps of their own landmarks
    assert [c.networks["stage1"].position_head.out_features for c in model.cascades] == [12, 8, 16]
    assert [c.networks["stage2"].trunk[0].in_channels for c in model.cascades] == [9, 7, 11]
    for cascade in model.cascades:
        with torch.no_grad():
            cascade.networks["stage1"].position_head.weight.zero_()
            cascade.networks["stage1"].position_head.bias.fill_(0.1)
    crops = torch.randint(0, 255, (3, 3, 32, 32), dtype=torch.uint8)
    outs = model.run_cascade(crops, 3, categories=[1, 0, 2])
    lower = outs[0]["landmarks"][0]  # slots 4-7 predicted, the rest untouched
    assert torch.allclose(lower[4:], torch.full((4, 2), 0.1))
    assert lower[:4].abs().sum() == 0
    assert outs[0]["landmarks"][1][[4, 5]].abs().sum() == 0  # upper: no waistlines
    assert torch.allclose(outs[0]["landmarks"][2], torch.full((8, 2), 0.1))
    assert outs[2]["routing"].shape == (3,)
    # The cascade follows the clothing type given with the boxes (GT type or detector class).
    image = torch.randint(0, 255, (3, 60, 80), dtype=torch.uint8)
    boxes = torch.tensor([[10.0, 5.0, 50.0, 55.0], [0.0, 0.0, 80.0, 60.0]])
    res = model([{"image": image, "boxes": boxes, "classes": torch.tensor([1, 2])}])[0]
    assert res["aligned_keypoints"].shape == (2, L, 2)
    centre = torch.tensor([30.0, 30.0])  # box 0's centre: undefined slots stay there
    assert torch.allclose(res["aligned_keypoints"][0, :4], centre.expand(4, 2))
    with pytest.raises(KeyError, match="classes"):
        model([{"image": image, "boxes": boxes}])
    with pytest.raises(ValueError, match="clothing type 5"):
        model([{"image": image, "boxes": boxes, "classes": torch.tensor([5, 0])}])


def test_per_type_training_touches_only_the_garments_cascades():
    model = build_model(tiny_cfg(**{"MODEL.DFA.PER_TYPE_CASCADES": True})).train()
    for index, cascade in enumerate(model.cascades):
        model.set_centres(1, torch.randn_like(cascade.centres_1), cascade=index)
    batch = crop_batch(4)
    for item, category in zip(batch, [0, 2, 2, 0]):
        item["category"] = category
    with EventStorage(0):
        losses = model(batch)
    sum(losses.values()).backward()
    touched = [
        any(p.grad is not None for p in c.networks["stage1"].parameters()) for c in model.cascades
    ]
    assert touched == [True, False, True]
