"""Cell grid and assigners (docs/DESIGN.md §5, §10, §13.10)."""

import math
import unittest
import torch

from kgdet.modeling.assigner import BACKGROUND, IGNORE, CellGrid, MaxIoUAssigner, PointAssigner


def _grid(sizes, strides, offset=0.0):
    return CellGrid.build(sizes, strides, offset, torch.device("cpu"))


def _brute_force_assignment(grid, valid, gt_boxes, pos_num, scale=4.0):
    """Sequential reference: GTs in order, a cell takes g if strictly nearer than its holder."""
    num_cells = grid.points.shape[0]
    holder = [BACKGROUND] * num_cells
    holder_dist = [math.inf] * num_cells
    log_strides = [math.log2(s) for s in grid.level_strides]
    for g, (x1, y1, x2, y2) in enumerate(gt_boxes.tolist()):
        w, h = max(x2 - x1, 1e-6), max(y2 - y1, 1e-6)
        lvl = math.floor((math.log2(w / scale) + math.log2(h / scale)) / 2)
        lvl = min(max(lvl, log_strides[0]), log_strides[-1])
        level = min(range(len(log_strides)), key=lambda i: abs(log_strides[i] - lvl))
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        cands = []
        for r in range(num_cells):
            if int(grid.levels[r]) != level or not bool(valid[r]):
                continue
            px, py = grid.points[r].tolist()
            cands.append((math.hypot((px - cx) / w, (py - cy) / h), r))
        cands.sort()
        for d, r in cands[:pos_num]:
            if d < holder_dist[r]:
                holder[r], holder_dist[r] = g, d
    return torch.tensor(holder)


class TestCellGrid(unittest.TestCase):
    def test_points_strides_levels(self):
        grid = _grid([(2, 3), (1, 2)], [32, 64])
        self.assertEqual(grid.points.shape, (8, 2))
        # Row-major within a level, x = j*s, y = i*s (no half-cell offset by default).
        self.assertEqual(
            grid.points[:6].tolist(), [[0, 0], [32, 0], [64, 0], [0, 32], [32, 32], [64, 32]]
        )
        self.assertEqual(grid.points[6:].tolist(), [[0, 0], [64, 0]])
        self.assertEqual(grid.strides.tolist(), [32.0] * 6 + [64.0] * 2)
        self.assertEqual(grid.levels.tolist(), [0] * 6 + [1] * 2)
        self.assertEqual(grid.num_cells_per_level, [6, 2])

    def test_grid_offset(self):
        grid = _grid([(1, 2)], [32], offset=0.5)
        self.assertEqual(grid.points.tolist(), [[16, 16], [48, 16]])

    def test_valid_mask_excludes_batch_padding(self):
        # Batch padded to 128x128; this image is 70 (h) x 40 (w): its own /32 extent is 96x64.
        grid = _grid([(4, 4), (2, 2)], [32, 64])
        valid = grid.valid_mask((70, 40), 32)
        p5 = valid[:16].view(4, 4)
        self.assertEqual(p5.sum().item(), 3 * 2)
        self.assertTrue(p5[:3, :2].all())
        p6 = valid[16:].view(2, 2)  # ceil(96/64) = 2 rows, ceil(64/64) = 1 column
        self.assertEqual(p6.tolist(), [[True, False], [True, False]])

    def test_valid_mask_tiny_image(self):
        grid = _grid([(1, 1)], [32])
        self.assertTrue(grid.valid_mask((5, 7), 32).all())


class TestPointAssigner(unittest.TestCase):
    def test_positives_are_nearest_cells_by_normalised_distance(self):
        grid = _grid([(12, 14)], [32])
        valid = torch.ones(grid.points.shape[0], dtype=torch.bool)
        gt = torch.tensor([[101.0, 77.0, 301.0, 157.0]])  # elongated: 200 x 80
        for pos_num in (25, 9):
            matched = PointAssigner(pos_num)(grid, valid, gt)
            self.assertEqual((matched == 0).sum().item(), pos_num)
            c = torch.tensor([201.0, 117.0])
            d = ((grid.points - c) / torch.tensor([200.0, 80.0])).norm(dim=1)
            expected = set(d.argsort()[:pos_num].tolist())
            self.assertEqual(set((matched == 0).nonzero().flatten().tolist()), expected)

    def test_conflicts_go_to_the_nearer_object_ties_to_the_earlier(self):
        grid = _grid([(10, 10)], [32])
        valid = torch.ones(100, dtype=torch.bool)
        gt = torch.tensor([[40.0, 40.0, 200.0, 180.0], [90.0, 70.0, 230.0, 230.0]])
        matched = PointAssigner(25)(grid, valid, gt)
        self.assertTrue(torch.equal(matched, _brute_force_assignment(grid, valid, gt, 25)))
        self.assertGreater((matched == 0).sum().item(), 0)
        self.assertGreater((matched == 1).sum().item(), 0)
        self.assertLess((matched >= 0).sum().item(), 50)  # some cells were contested
        # Identical objects: every contested cell stays with the first.
        twin = torch.tensor([[40.0, 40.0, 200.0, 180.0]] * 2)
        matched = PointAssigner(25)(grid, valid, twin)
        self.assertEqual((matched == 0).sum().item(), 25)
        self.assertEqual((matched == 1).sum().item(), 0)

    def test_all_objects_land_on_the_single_fed_level(self):
        grid = _grid([(25, 42)], [32])
        valid = torch.ones(grid.points.shape[0], dtype=torch.bool)
        gt = torch.tensor([[0.0, 0.0, 10.0, 12.0], [100.0, 100.0, 1300.0, 790.0]])
        matched = PointAssigner(25)(grid, valid, gt)
        self.assertEqual((matched == 0).sum().item(), 25)
        self.assertEqual((matched == 1).sum().item(), 25)

    def test_level_choice_on_p5_p6_p7(self):
        grid = _grid([(40, 40), (20, 20), (10, 10)], [32, 64, 128])
        valid = torch.ones(grid.points.shape[0], dtype=torch.bool)
        # sqrt(wh) 200 -> P5 (< 256), 300 -> P6, 600 -> P7, 2000 -> clamped to P7, 8 -> P5.
        sides = [200.0, 300.0, 600.0, 2000.0, 8.0]
        expected_levels = [0, 1, 2, 2, 0]
        for side, level in zip(sides, expected_levels):
            gt = torch.tensor(
                [[600.0 - side / 2, 600.0 - side / 2, 600.0 + side / 2, 600 + side / 2]]
            )
            matched = PointAssigner(9)(grid, valid, gt)
            levels = grid.levels[matched == 0].unique().tolist()
            self.assertEqual(levels, [level], f"side {side}")

    def test_multi_level_matches_reference(self):
        grid = _grid([(20, 20), (10, 10), (5, 5)], [32, 64, 128])
        valid = torch.ones(grid.points.shape[0], dtype=torch.bool)
        gt = torch.tensor(
            [[10.0, 20.0, 200.0, 220.0], [150.0, 100.0, 600.0, 500.0], [300.0, 300.0, 380.0, 350.0]]
        )
        matched = PointAssigner(25)(grid, valid, gt)
        self.assertTrue(torch.equal(matched, _brute_force_assignment(grid, valid, gt, 25)))

    def test_tiny_map_clamps_pos_num(self):
        grid = _grid([(2, 2)], [32])
        valid = torch.ones(4, dtype=torch.bool)
        matched = PointAssigner(25)(grid, valid, torch.tensor([[0.0, 0.0, 50.0, 40.0]]))
        self.assertEqual(matched.tolist(), [0, 0, 0, 0])
        grid = _grid([(1, 1)], [32])
        matched = PointAssigner(25)(
            grid, torch.ones(1, dtype=torch.bool), torch.tensor([[0.0, 0, 20, 20]])
        )
        self.assertEqual(matched.tolist(), [0])

    def test_only_valid_cells_are_assigned(self):
        grid = _grid([(4, 4)], [32])
        valid = grid.valid_mask((60, 60), 32)  # 2x2 valid cells in a 4x4 padded map
        matched = PointAssigner(25)(grid, valid, torch.tensor([[0.0, 0.0, 60.0, 60.0]]))
        self.assertEqual((matched == 0).sum().item(), 4)
        self.assertTrue(valid[matched == 0].all())

    def test_no_objects(self):
        grid = _grid([(3, 3)], [32])
        matched = PointAssigner(25)(grid, torch.ones(9, dtype=torch.bool), torch.zeros(0, 4))
        self.assertEqual(matched.tolist(), [BACKGROUND] * 9)

    def test_bad_pos_num(self):
        with self.assertRaisesRegex(ValueError, "POS_NUM"):
            PointAssigner(0)


class TestMaxIoUAssigner(unittest.TestCase):
    def test_thresholds_ignore_and_low_quality(self):
        gt = torch.tensor([[0.0, 0.0, 100.0, 100.0], [300.0, 300.0, 400.0, 400.0]])
        pred = torch.tensor(
            [
                [0.0, 0.0, 100.0, 60.0],  # IoU 0.6 with gt0 -> positive
                [0.0, 0.0, 100.0, 45.0],  # IoU 0.45 -> ignored
                [0.0, 0.0, 100.0, 10.0],  # IoU 0.1 -> background
                [300.0, 300.0, 330.0, 330.0],  # IoU 0.09, gt1's best -> low-quality positive
                [600.0, 600.0, 700.0, 700.0],  # no overlap -> background
            ]
        )
        valid = torch.ones(5, dtype=torch.bool)
        matched = MaxIoUAssigner((0.4, 0.5), 0.0)(pred, valid, gt)
        self.assertEqual(matched.tolist(), [0, IGNORE, BACKGROUND, 1, BACKGROUND])

    def test_zero_iou_is_never_positive(self):
        # Degenerate (zero-area) predictions: every IoU is 0; nothing may become positive.
        gt = torch.tensor([[0.0, 0.0, 100.0, 100.0]])
        pred = torch.tensor([[10.0, 10.0, 10.0, 10.0]] * 4)
        matched = MaxIoUAssigner()(pred, torch.ones(4, dtype=torch.bool), gt)
        self.assertEqual(matched.tolist(), [BACKGROUND] * 4)

    def test_min_pos_iou(self):
        gt = torch.tensor([[0.0, 0.0, 100.0, 100.0]])
        pred = torch.tensor([[0.0, 0.0, 100.0, 20.0]])  # IoU 0.2
        valid = torch.ones(1, dtype=torch.bool)
        self.assertEqual(MaxIoUAssigner((0.4, 0.5), 0.0)(pred, valid, gt).tolist(), [0])
        self.assertEqual(MaxIoUAssigner((0.4, 0.5), 0.3)(pred, valid, gt).tolist(), [BACKGROUND])

    def test_invalid_cells_and_empty_gt(self):
        gt = torch.tensor([[0.0, 0.0, 100.0, 100.0]])
        pred = torch.tensor([[0.0, 0.0, 100.0, 100.0], [0.0, 0.0, 90.0, 90.0]])
        matched = MaxIoUAssigner()(pred, torch.tensor([False, True]), gt)
        self.assertEqual(matched.tolist(), [BACKGROUND, 0])
        matched = MaxIoUAssigner()(pred, torch.ones(2, dtype=torch.bool), torch.zeros(0, 4))
        self.assertEqual(matched.tolist(), [BACKGROUND, BACKGROUND])

    def test_bad_thresholds(self):
        with self.assertRaisesRegex(ValueError, "REFINE_IOU_THRESHOLDS"):
            MaxIoUAssigner((0.6, 0.5))
