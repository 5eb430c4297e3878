"""The DFA meta-architecture: three cascaded landmark regressors with pseudo-labels and routing.

Training (``model.train()``) trains ONE stage, ``MODEL.DFA.TRAIN_STAGE``; the earlier stages run
frozen in eval mode to produce its input (their weights and the stage's cluster centres must have
been loaded: tools/train_dfa.py does it). Inputs are crop-level dicts from
:class:`dfa.data.DFACropMapper`:
``image`` (C, S, S) uint8 crop, ``landmarks`` (L, 2) landmark-frame units, ``labelled`` (L,)
bool, ``visibility`` (L,) int64 FLD code (-1 = slot not defined for the clothing type),
``category`` int (selects the cascade with ``MODEL.DFA.PER_TYPE_CASCADES``).

Inference (``model.eval()``) takes image-level dicts from :class:`dfa.data.DFAImageMapper` or
:class:`dfa.predictor.DFAPredictor`: ``boxes`` (G, 4) XYXY in the image's pixels, either
``crops`` (G, C, S, S) or the full ``image`` (C, H, W), and with per-type cascades ``classes``
(G,) clothing types. Each output dict holds ``aligned_keypoints`` (G, L, 2) image pixels (last
stage), ``aligned_keypoints_per_stage`` (list over stages), ``landmark_visibility`` (G, L, 3)
probabilities of the last stage and, with stage 3, ``routing`` (G,) bool (True = branch 1,
"easy") — the FLDEvaluator aligned-output format. With per-type cascades the slots a garment's
type does not define are the frame centre with uniform visibility (no network predicts them).
"""

import logging
import numpy as np
from typing import Dict, Iterator, List, Optional, Tuple
import torch
from torch import nn

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.utils.events import get_event_storage

from .boxes import check_boxes_xyxy
from .cascade import DFACascade, build_cascades
from .data import class_slots_of
from .landmarks import (
    CROP_MODES,
    crop_box,
    denormalize_landmarks,
    landmark_frame,
    normalized_to_crop_pixels,
    sanitize_box,
)
from .losses import aux_loss_weight, label_loss, position_loss, visibility_loss
from .pseudo_labels import cluster_space, pseudo_labels, route, routing_labels

__all__ = ["DFA"]

logger = logging.getLogger(__name__)

_OUTPUT_SHAPES = {"landmarks": 2, "positions": 2, "visibility": 3}


@META_ARCH_REGISTRY.register()
class DFA(nn.Module):
    """Deep Fashion Alignment (Liu et al., ECCV 2016, §3)."""

    @configurable
    def __init__(
        self,
        *,
        cascades: List[DFACascade],
        per_type: bool,
        num_stages: int,
        train_stage: int,
        num_landmarks: int,
        num_clusters: int,
        crop_size: int,
        crop_mode: str,
        box_expand: float,
        prev_input: List[str],
        heatmap_sigma: float,
        temperature: float,
        routing_temperature: float,
        distance_scale: float,
        visibility_weight: float,
        label_weight: float,
        aux_decay_iters: List[int],
        prev_jitter: float,
        pixel_mean: List[float],
        pixel_std: List[float],
        input_format: str,
    ):
        """
        Args:
            cascades: one :class:`DFACascade` (shared) or one per clothing type (``per_type``).
            routing_temperature: T_r of the routing label (-1 = T, 0 = hard), DESIGN.md §6.
            aux_decay_iters: (t1, t2) of Eq. 4 in iterations.
            Others: the MODEL.DFA keys of the same name (dfa/config.py).
        """
        super().__init__()
        if not 1 <= num_stages <= 3:
            raise ValueError(f"MODEL.DFA.NUM_STAGES must be 1, 2 or 3, got {num_stages}")
        if not 1 <= train_stage <= num_stages:
            raise ValueError(
                f"MODEL.DFA.TRAIN_STAGE must be in 1..NUM_STAGES={num_stages}, got {train_stage}"
            )
        if crop_mode not in CROP_MODES:
            raise ValueError(f"MODEL.DFA.CROP_MODE must be one of {CROP_MODES}, got {crop_mode!r}")
        self.cascades = nn.ModuleList(cascades)
        self.per_type = per_type
        self._cascade_of = {c: i for i, cas in enumerate(cascades) for c in cas.categories}
        self.num_stages = num_stages
        self.train_stage = train_stage
        # Stages run at inference (the training driver lowers it to evaluate a partial cascade).
        self.test_stages = num_stages
        self.num_landmarks = num_landmarks
        self.num_clusters = num_clusters
        self.crop_size = crop_size
        self.crop_mode = crop_mode
        self.box_expand = box_expand
        self.prev_input = set(prev_input)
        self.heatmap_sigma = heatmap_sigma
        self.temperature = temperature
        self.routing_temperature = temperature if routing_temperature < 0 else routing_temperature
        self.distance_scale = distance_scale
        self.visibility_weight = visibility_weight
        self.label_weight = label_weight
        self.aux_decay_iters = tuple(aux_decay_iters)
        self.prev_jitter = prev_jitter
        self.input_format = input_format
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.register_buffer("stage_trained", torch.zeros(3, dtype=torch.bool))
        # Garments routed to branch 1 / branch 2 while training stage 3 (logged by the trainer).
        self.routing_counts = torch.zeros(2, dtype=torch.long)

    @classmethod
    def from_config(cls, cfg):
        d = cfg.MODEL.DFA
        unknown = set(d.PREV_INPUT) - {"heatmap", "coords"}
        if unknown:
            raise ValueError(f"MODEL.DFA.PREV_INPUT: unknown entries {sorted(unknown)}")
        if not 0 <= d.AUX_DECAY_START <= d.AUX_DECAY_END:
            raise ValueError("MODEL.DFA needs 0 <= AUX_DECAY_START <= AUX_DECAY_END (fractions)")
        names = list(cfg.DATASETS.TRAIN) or list(cfg.DATASETS.TEST)
        max_iter = cfg.SOLVER.MAX_ITER
        return {
            "cascades": build_cascades(cfg, class_slots_of(names)),
            "per_type": d.PER_TYPE_CASCADES,
            "num_stages": d.NUM_STAGES,
            "train_stage": d.TRAIN_STAGE,
            "num_landmarks": d.NUM_LANDMARKS,
            "num_clusters": d.NUM_CLUSTERS,
            "crop_size": d.CROP_SIZE,
            "crop_mode": d.CROP_MODE,
            "box_expand": d.BOX_EXPAND,
            "prev_input": list(d.PREV_INPUT),
            "heatmap_sigma": d.HEATMAP_SIGMA,
            "temperature": d.TEMPERATURE,
            "routing_temperature": d.ROUTING_TEMPERATURE,
            "distance_scale": d.DISTANCE_SCALE,
            "visibility_weight": d.VISIBILITY_WEIGHT,
            "label_weight": d.LABEL_WEIGHT,
            "aux_decay_iters": [
                int(round(d.AUX_DECAY_START * max_iter)),
                int(round(d.AUX_DECAY_END * max_iter)),
            ],
            "prev_jitter": d.PREV_JITTER,
            "pixel_mean": list(cfg.MODEL.PIXEL_MEAN),
            "pixel_std": list(cfg.MODEL.PIXEL_STD),
            "input_format": cfg.INPUT.FORMAT,
        }

    # ---- helpers ---------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def stage_network_names(self, stage: int) -> List[str]:
        """Names (inside a cascade) of the networks of ``stage``."""
        return ["stage3_easy", "stage3_hard"] if stage == 3 else [f"stage{stage}"]

    def named_networks(self, stage: Optional[int] = None) -> Iterator[Tuple[str, nn.Module]]:
        """(``cascade{i}/name``, network) of every cascade, for one stage or all stages."""
        for i, cascade in enumerate(self.cascades):
            for name, network in cascade.networks.items():
                if stage is None or name in self.stage_network_names(stage):
                    yield f"cascade{i}/{name}", network

    def stage_parameters(self, stage: int) -> List[nn.Parameter]:
        """Trainable parameters of one stage (both branches for stage 3, every cascade)."""
        return [p for _, net in self.named_networks(stage) for p in net.parameters()]

    def train(self, mode: bool = True):
        """Earlier stages stay in eval mode (frozen) while a later stage trains."""
        super().train(mode)
        if mode:
            for stage in range(1, self.train_stage):
                for _, network in self.named_networks(stage):
                    network.eval()
        return self

    def set_centres(self, stage: int, centres, cluster_error=None, threshold=None, cascade=0):
        """Install the k-means centres of ``stage`` in cascade ``cascade`` (see DFACascade)."""
        self.cascades[cascade].set_centres(stage, centres, cluster_error, threshold)

    def cascade_index(self, category: int) -> int:
        """The cascade that handles clothing type ``category``; ValueError if none does."""
        if category not in self._cascade_of:
            raise ValueError(
                f"DFA: clothing type {category} has no cascade (types "
                f"{sorted(self._cascade_of)}; MODEL.DFA.NUM_CLASSES / the dataset's classes)"
            )
        return self._cascade_of[category]

    def _normalize_pixels(self, crops: torch.Tensor) -> torch.Tensor:
        return (crops.to(self.device, torch.float32) - self.pixel_mean) / self.pixel_std

    def landmark_heatmaps(self, normalized: torch.Tensor) -> torch.Tensor:
        """Gaussian maps of landmarks (N, L, 2) frame units on the crop grid -> (N, L, S, S)."""
        size = self.crop_size
        pix = normalized_to_crop_pixels(normalized, size, self.box_expand)
        grid = torch.arange(size, device=normalized.device, dtype=normalized.dtype) + 0.5
        sigma = self.heatmap_sigma * size
        gx = torch.exp(-((grid - pix[..., 0:1]) ** 2) / (2 * sigma**2))  # (N, L, S)
        gy = torch.exp(-((grid - pix[..., 1:2]) ** 2) / (2 * sigma**2))
        return gy.unsqueeze(-1) * gx.unsqueeze(-2)

    def _run_network(self, cascade: DFACascade, name: str, images, prev):
        """One network; for refiners the returned ``landmarks`` are prev + predicted offset."""
        network = cascade.networks[name]
        coords = None
        if prev is not None:
            if "heatmap" in self.prev_input:
                images = torch.cat([images, self.landmark_heatmaps(prev)], dim=1)
            if "coords" in self.prev_input:
                coords = prev.flatten(1)
        out = network(images, coords)
        out["landmarks"] = out["positions"] if prev is None else prev + out["positions"]
        return out

    def _route(self, cascade: DFACascade, stage2_out: Dict[str, torch.Tensor]) -> torch.Tensor:
        labels = routing_labels(stage2_out["labels"], self.temperature, self.routing_temperature)
        return route(labels, cascade.cluster_error_2, float(cascade.routing_threshold))

    def _run_stage3(self, cascade: DFACascade, images, prev, routing):
        """Each garment goes through the branch chosen by ``routing``; outputs re-assembled."""
        n = images.shape[0]
        outputs = {}
        for name, mask in (("stage3_easy", routing), ("stage3_hard", ~routing)):
            if not mask.any():
                continue
            part = self._run_network(cascade, name, images[mask], prev[mask])
            for key, value in part.items():
                if key not in outputs:
                    outputs[key] = value.new_zeros((n,) + value.shape[1:])
                outputs[key] = outputs[key].index_put((mask.nonzero()[:, 0],), value)
        if not outputs:  # no garment at all
            outputs = self._run_network(cascade, "stage3_easy", images, prev)
        outputs["routing"] = routing
        return outputs

    def _run_stages(self, cascade: DFACascade, images, num_stages: int) -> List[Dict]:
        """Stages 1..num_stages of one cascade on normalised images -> one dict per stage,
        landmarks over the cascade's own slots."""
        outputs: List[Dict[str, torch.Tensor]] = []
        for stage in range(1, num_stages + 1):
            prev = outputs[-1]["landmarks"] if outputs else None
            if stage == 3:
                outputs.append(
                    self._run_stage3(cascade, images, prev, self._route(cascade, outputs[-1]))
                )
            else:
                outputs.append(self._run_network(cascade, f"stage{stage}", images, prev))
        return outputs

    def _groups(self, n: int, categories) -> List[Tuple[int, torch.Tensor]]:
        """(cascade index, row indices) of the garments each cascade handles."""
        if not self.per_type:
            return [(0, torch.arange(n, device=self.device))]
        if categories is None:
            raise ValueError(
                "per-type DFA cascades (MODEL.DFA.PER_TYPE_CASCADES) need each garment's "
                "clothing type: 'category' of the crops, 'classes' (G,) of the boxes"
            )
        categories = torch.as_tensor(categories, dtype=torch.long).reshape(-1).tolist()
        if len(categories) != n:
            raise ValueError(f"DFA: {len(categories)} clothing types for {n} garments")
        index = torch.as_tensor([self.cascade_index(c) for c in categories], dtype=torch.long)
        groups = []
        for i in range(len(self.cascades)):
            rows = (index == i).nonzero()[:, 0]
            if rows.numel():
                groups.append((i, rows.to(self.device)))
        return groups

    def run_cascade(
        self, crops: torch.Tensor, num_stages: int, categories=None
    ) -> List[Dict[str, torch.Tensor]]:
        """Stages 1..num_stages on crops (N, C, S, S) -> one output dict per stage, landmarks
        over all L slots (``categories`` (N,) choose the cascade with per-type cascades)."""
        images = self._normalize_pixels(crops)
        n, num = images.shape[0], self.num_landmarks
        full: List[Dict[str, torch.Tensor]] = []
        for stage in range(num_stages):
            entry = {
                key: images.new_zeros((n, num, width)) for key, width in _OUTPUT_SHAPES.items()
            }
            entry["labels"] = images.new_zeros((n, self.num_clusters))
            if stage == 2:
                entry["routing"] = torch.zeros(n, dtype=torch.bool, device=self.device)
            full.append(entry)
        for index, rows in self._groups(n, categories):
            cascade = self.cascades[index]
            slots = torch.as_tensor(cascade.slots, device=self.device)
            for entry, out in zip(full, self._run_stages(cascade, images[rows], num_stages)):
                for key in _OUTPUT_SHAPES:
                    entry[key][rows.unsqueeze(1), slots] = out[key]
                entry["labels"][rows] = out["labels"]
                if "routing" in out:
                    entry["routing"][rows] = out["routing"]
        return full

    # ---- training --------------------------------------------------------------------------------
    def _check_ready(self, stage: int) -> None:
        for earlier in range(1, stage):
            if not bool(self.stage_trained[earlier - 1]):
                raise RuntimeError(
                    f"DFA stage {stage} cannot train: stage-{earlier} weights are not loaded "
                    f"(train stage {earlier} first; tools/train_dfa.py stores them in "
                    f"OUTPUT_DIR/stage{earlier}/model_final.pth)"
                )
        if not all(bool(c.centres_ready[stage - 1]) for c in self.cascades):
            raise RuntimeError(
                f"DFA stage {stage} cannot train: its k-means cluster centres are not set "
                f"(tools/train_dfa.py computes them into OUTPUT_DIR/stage{stage}/centres.pth)"
            )

    def _cascade_losses(self, cascade: DFACascade, stage: int, crops, gt, labelled, visibility):
        """Sums (not means) of the three loss terms over one cascade's garments, the number of
        supervised visibility slots, and the routing mask (stage 3)."""
        prev = route_mask = None
        if stage > 1:
            with torch.no_grad():
                earlier = self._run_stages(cascade, self._normalize_pixels(crops), stage - 1)
            prev = earlier[-1]["landmarks"]
            if self.prev_jitter > 0:
                prev = prev + torch.randn_like(prev) * self.prev_jitter
            if stage == 3:
                route_mask = self._route(cascade, earlier[-1])
        images = self._normalize_pixels(crops)
        if stage == 3:
            out = self._run_stage3(cascade, images, prev, route_mask)
        else:
            out = self._run_network(cascade, f"stage{stage}", images, prev)
        with torch.no_grad():
            space = cluster_space(stage, gt, labelled, prev, self.distance_scale)
            target = pseudo_labels(space, getattr(cascade, f"centres_{stage}"), self.temperature)
        n = crops.shape[0]
        num_visible = int((visibility >= 0).sum())
        sums = (
            position_loss(out["landmarks"], gt, labelled) * n,
            visibility_loss(out["visibility"], visibility) * num_visible,
            label_loss(torch.softmax(out["labels"], dim=1), target) * n,
        )
        return sums, num_visible, route_mask

    def forward(self, batched_inputs: List[Dict]):
        if not self.training:
            return self.inference(batched_inputs)
        stage = self.train_stage
        self._check_ready(stage)
        crops = torch.stack([x["image"] for x in batched_inputs])
        gt = torch.stack([x["landmarks"] for x in batched_inputs]).to(self.device).float()
        labelled = torch.stack([x["labelled"] for x in batched_inputs]).to(self.device)
        visibility = torch.stack([x["visibility"] for x in batched_inputs]).to(self.device)
        categories = [x.get("category") for x in batched_inputs] if self.per_type else None

        n = crops.shape[0]
        totals = [gt.new_zeros(()) for _ in range(3)]
        num_visible, routes = 0, []
        for index, rows in self._groups(n, categories):
            cascade = self.cascades[index]
            slots = torch.as_tensor(cascade.slots, device=self.device)
            sums, count, route_mask = self._cascade_losses(
                cascade,
                stage,
                crops[rows.cpu()],
                gt[rows][:, slots],
                labelled[rows][:, slots],
                visibility[rows][:, slots],
            )
            totals = [t + s for t, s in zip(totals, sums)]
            num_visible += count
            if route_mask is not None:
                routes.append(route_mask)
        iteration = get_event_storage().iter
        alpha = aux_loss_weight(iteration, self.visibility_weight, *self.aux_decay_iters)
        beta = aux_loss_weight(iteration, self.label_weight, *self.aux_decay_iters)
        losses = {
            "loss_positions": totals[0] / n,
            "loss_visibility": alpha * totals[1] / max(num_visible, 1),
            "loss_labels": beta * totals[2] / n,
        }
        storage = get_event_storage()
        storage.put_scalars(aux_weight_visibility=alpha, aux_weight_labels=beta)
        if routes:
            routing = torch.cat(routes)
            easy = int(routing.sum())
            self.routing_counts += torch.tensor([easy, routing.numel() - easy])
            storage.put_scalar("routing_easy_fraction", easy / routing.numel())
        return losses

    # ---- inference -------------------------------------------------------------------------------
    def _crops_of(self, item: Dict) -> torch.Tensor:
        if "crops" in item:
            return item["crops"]
        if "image" not in item:
            raise KeyError("DFA inference input needs 'boxes' and either 'crops' or 'image'")
        image = np.ascontiguousarray(item["image"].permute(1, 2, 0).cpu().numpy())
        boxes = item["boxes"].cpu().numpy().reshape(-1, 4)
        crops = [crop_box(image, b, self.crop_size, self.box_expand, self.crop_mode) for b in boxes]
        if not crops:
            return torch.zeros(
                (0, image.shape[2], self.crop_size, self.crop_size), dtype=torch.uint8
            )
        return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2)

    @torch.no_grad()
    def inference(self, batched_inputs: List[Dict]) -> List[Dict]:
        crops_list, boxes_list, classes_list = [], [], []
        for item in batched_inputs:
            if "boxes" not in item:
                raise KeyError("DFA inference input needs 'boxes' (G, 4) XYXY in image pixels")
            boxes = check_boxes_xyxy(item["boxes"], "boxes", allow_zero_size=True)
            boxes = [sanitize_box(b) for b in boxes.tolist()]  # >= 1 px, as the crops
            boxes = torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4))
            boxes_list.append(boxes)
            crops_list.append(self._crops_of({**item, "boxes": boxes}))
            if self.per_type:
                if item.get("classes") is None:
                    raise KeyError(
                        "per-type DFA cascades need 'classes' (G,): the clothing type of every "
                        "box (ground-truth type, or the detector's pred_classes)"
                    )
                classes = torch.as_tensor(item["classes"], dtype=torch.long).reshape(-1)
                if classes.numel() != len(boxes):
                    raise ValueError(
                        f"DFA inference: {classes.numel()} 'classes' for {len(boxes)} boxes"
                    )
                classes_list.append(classes)
        counts = [len(b) for b in boxes_list]
        crops = torch.cat(crops_list) if crops_list else torch.zeros(0)
        categories = torch.cat(classes_list) if self.per_type and classes_list else None
        num_stages = min(self.test_stages, self.num_stages)
        outputs = self.run_cascade(crops, num_stages, categories)
        frames = landmark_frame(torch.cat(boxes_list).to(self.device), self.crop_mode)
        per_stage = [denormalize_landmarks(o["landmarks"], frames) for o in outputs]
        visibility = torch.softmax(outputs[-1]["visibility"], dim=-1)
        results = []
        start = 0
        for count in counts:
            sl = slice(start, start + count)
            result = {
                "aligned_keypoints": per_stage[-1][sl],
                "aligned_keypoints_per_stage": [p[sl] for p in per_stage],
                "landmark_visibility": visibility[sl],
            }
            if "routing" in outputs[-1]:
                result["routing"] = outputs[-1]["routing"][sl]
            results.append(result)
            start += count
        return results
