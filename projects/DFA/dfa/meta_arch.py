"""The DFA meta-architecture: three cascaded landmark regressors with pseudo-labels and routing.

Training (``model.train()``) trains ONE stage, ``MODEL.DFA.TRAIN_STAGE``; the earlier stages run
frozen in eval mode to produce its input (their weights and the stage's cluster centres must have
been loaded: tools/train_dfa.py does it). Inputs are crop-level dicts from
:class:`dfa.data.DFACropMapper`:
``image`` (C, S, S) uint8 crop, ``landmarks`` (L, 2) box units, ``labelled`` (L,) bool,
``visibility`` (L,) int64 FLD code (-1 = slot not defined for the clothing type).

Inference (``model.eval()``) takes image-level dicts from :class:`dfa.data.DFAImageMapper` or
:class:`dfa.predictor.DFAPredictor`: ``boxes`` (G, 4) XYXY in the image's pixels and either
``crops`` (G, C, S, S) or the full ``image`` (C, H, W). Each output dict holds
``aligned_keypoints`` (G, L, 2) image pixels (last stage), ``aligned_keypoints_per_stage``
(list over stages), ``landmark_visibility`` (G, L, 3) probabilities of the last stage and, with
stage 3, ``routing`` (G,) bool (True = branch 1, "easy") — the FLDEvaluator aligned-output format.
"""

import logging
import numpy as np
from typing import Dict, List, Optional
import torch
from torch import nn

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.utils.events import get_event_storage

from .boxes import check_boxes_xyxy
from .landmarks import crop_box, denormalize_landmarks, normalized_to_crop_pixels, sanitize_box
from .losses import aux_loss_weight, label_loss, position_loss, visibility_loss
from .network import StageNetwork, build_stage_network
from .pseudo_labels import cluster_space, pseudo_labels, route

__all__ = ["DFA"]

logger = logging.getLogger(__name__)

_SPACE_DIMS = {1: lambda n: 2 * n, 2: lambda n: 2 * n, 3: lambda n: 4 * n * n}


@META_ARCH_REGISTRY.register()
class DFA(nn.Module):
    """Deep Fashion Alignment (Liu et al., ECCV 2016, §3)."""

    @configurable
    def __init__(
        self,
        *,
        networks: Dict[str, StageNetwork],
        num_stages: int,
        train_stage: int,
        num_landmarks: int,
        num_clusters: int,
        crop_size: int,
        box_expand: float,
        prev_input: List[str],
        heatmap_sigma: float,
        temperature: float,
        distance_scale: float,
        routing_threshold: float,
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
            networks: "stage1", "stage2", "stage3_easy", "stage3_hard" (those of num_stages).
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
        self.networks = nn.ModuleDict(networks)
        self.num_stages = num_stages
        self.train_stage = train_stage
        # Stages run at inference (the training driver lowers it to evaluate a partial cascade).
        self.test_stages = num_stages
        self.num_landmarks = num_landmarks
        self.num_clusters = num_clusters
        self.crop_size = crop_size
        self.box_expand = box_expand
        self.prev_input = set(prev_input)
        self.heatmap_sigma = heatmap_sigma
        self.temperature = temperature
        self.distance_scale = distance_scale
        self.visibility_weight = visibility_weight
        self.label_weight = label_weight
        self.aux_decay_iters = tuple(aux_decay_iters)
        self.prev_jitter = prev_jitter
        self.input_format = input_format
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        # Cluster centres of each stage, the stage-2 cluster error magnitudes e(C_k), the routing
        # threshold, and readiness flags: all saved in checkpoints.
        for stage in range(1, num_stages + 1):
            dim = _SPACE_DIMS[stage](num_landmarks)
            self.register_buffer(f"centres_{stage}", torch.zeros(num_clusters, dim))
        self.register_buffer("cluster_error_2", torch.zeros(num_clusters))
        self.register_buffer("routing_threshold", torch.tensor(float(routing_threshold)))
        self.register_buffer("centres_ready", torch.zeros(3, dtype=torch.bool))
        self.register_buffer("stage_trained", torch.zeros(3, dtype=torch.bool))

    @classmethod
    def from_config(cls, cfg):
        d = cfg.MODEL.DFA
        prev_input = list(d.PREV_INPUT)
        unknown = set(prev_input) - {"heatmap", "coords"}
        if unknown:
            raise ValueError(f"MODEL.DFA.PREV_INPUT: unknown entries {sorted(unknown)}")
        networks = {}
        for stage, name in [(1, "stage1"), (2, "stage2"), (3, "stage3_easy"), (3, "stage3_hard")]:
            if stage > d.NUM_STAGES:
                continue
            refiner = stage > 1
            networks[name] = build_stage_network(
                d.BACKBONE,
                in_channels=3 + (d.NUM_LANDMARKS if refiner and "heatmap" in prev_input else 0),
                num_coord_inputs=2 * d.NUM_LANDMARKS if refiner and "coords" in prev_input else 0,
                fc_dim=d.FC_DIM,
                dropout=d.DROPOUT,
                num_landmarks=d.NUM_LANDMARKS,
                num_clusters=d.NUM_CLUSTERS,
                predicts_offsets=refiner,
                small_cnn_channels=list(d.SMALL_CNN_CHANNELS),
            )
        if not 0 <= d.AUX_DECAY_START <= d.AUX_DECAY_END:
            raise ValueError("MODEL.DFA needs 0 <= AUX_DECAY_START <= AUX_DECAY_END (fractions)")
        max_iter = cfg.SOLVER.MAX_ITER
        return {
            "networks": networks,
            "num_stages": d.NUM_STAGES,
            "train_stage": d.TRAIN_STAGE,
            "num_landmarks": d.NUM_LANDMARKS,
            "num_clusters": d.NUM_CLUSTERS,
            "crop_size": d.CROP_SIZE,
            "box_expand": d.BOX_EXPAND,
            "prev_input": prev_input,
            "heatmap_sigma": d.HEATMAP_SIGMA,
            "temperature": d.TEMPERATURE,
            "distance_scale": d.DISTANCE_SCALE,
            "routing_threshold": d.ROUTING_THRESHOLD,
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
        return ["stage3_easy", "stage3_hard"] if stage == 3 else [f"stage{stage}"]

    def stage_parameters(self, stage: int) -> List[nn.Parameter]:
        """Trainable parameters of one stage (both branches for stage 3)."""
        return [p for n in self.stage_network_names(stage) for p in self.networks[n].parameters()]

    def train(self, mode: bool = True):
        """Earlier stages stay in eval mode (frozen) while a later stage trains."""
        super().train(mode)
        if mode:
            for stage in range(1, self.train_stage):
                for name in self.stage_network_names(stage):
                    self.networks[name].eval()
        return self

    def set_centres(self, stage: int, centres: torch.Tensor, cluster_error=None, threshold=None):
        """Install the k-means centres of ``stage`` (and, for stage 2, e(C_k); for 3, eps)."""
        buffer = getattr(self, f"centres_{stage}")
        if tuple(centres.shape) != tuple(buffer.shape):
            raise ValueError(
                f"stage-{stage} centres must have shape {tuple(buffer.shape)}, "
                f"got {tuple(centres.shape)}"
            )
        buffer.copy_(centres)
        if cluster_error is not None:
            self.cluster_error_2.copy_(cluster_error)
        if threshold is not None:
            self.routing_threshold.fill_(float(threshold))
        self.centres_ready[stage - 1] = True

    def _normalize_pixels(self, crops: torch.Tensor) -> torch.Tensor:
        return (crops.to(self.device, torch.float32) - self.pixel_mean) / self.pixel_std

    def landmark_heatmaps(self, normalized: torch.Tensor) -> torch.Tensor:
        """Gaussian maps of landmarks (N, L, 2) box units on the crop grid -> (N, L, S, S)."""
        size = self.crop_size
        pix = normalized_to_crop_pixels(normalized, size, self.box_expand)
        grid = torch.arange(size, device=normalized.device, dtype=normalized.dtype) + 0.5
        sigma = self.heatmap_sigma * size
        gx = torch.exp(-((grid - pix[..., 0:1]) ** 2) / (2 * sigma**2))  # (N, L, S)
        gy = torch.exp(-((grid - pix[..., 1:2]) ** 2) / (2 * sigma**2))
        return gy.unsqueeze(-1) * gx.unsqueeze(-2)

    def _run_network(self, name: str, images: torch.Tensor, prev: Optional[torch.Tensor]):
        """One network; for refiners the returned ``landmarks`` are prev + predicted offset."""
        network = self.networks[name]
        coords = None
        if prev is not None:
            if "heatmap" in self.prev_input:
                images = torch.cat([images, self.landmark_heatmaps(prev)], dim=1)
            if "coords" in self.prev_input:
                coords = prev.flatten(1)
        out = network(images, coords)
        out["landmarks"] = out["positions"] if prev is None else prev + out["positions"]
        return out

    def _route(self, stage2_out: Dict[str, torch.Tensor]) -> torch.Tensor:
        labels = torch.softmax(stage2_out["labels"], dim=1)
        return route(labels, self.cluster_error_2, float(self.routing_threshold))

    def _run_stage3(self, images, prev, routing):
        """Each garment goes through the branch chosen by ``routing``; outputs re-assembled."""
        n = images.shape[0]
        outputs = {}
        for name, mask in (("stage3_easy", routing), ("stage3_hard", ~routing)):
            if not mask.any():
                continue
            part = self._run_network(name, images[mask], prev[mask])
            for key, value in part.items():
                if key not in outputs:
                    outputs[key] = value.new_zeros((n,) + value.shape[1:])
                outputs[key] = outputs[key].index_put((mask.nonzero()[:, 0],), value)
        if not outputs:  # no garment at all
            empty = self._run_network("stage3_easy", images, prev)
            outputs = empty
        outputs["routing"] = routing
        return outputs

    def run_cascade(self, crops: torch.Tensor, num_stages: int) -> List[Dict[str, torch.Tensor]]:
        """Stages 1..num_stages on crops (N, C, S, S) -> one output dict per stage."""
        images = self._normalize_pixels(crops)
        outputs: List[Dict[str, torch.Tensor]] = []
        for stage in range(1, num_stages + 1):
            prev = outputs[-1]["landmarks"] if outputs else None
            if stage == 3:
                outputs.append(self._run_stage3(images, prev, self._route(outputs[-1])))
            else:
                outputs.append(self._run_network(f"stage{stage}", images, prev))
        return outputs

    # ---- training ----------------------------------------------------------------------------------
    def _check_ready(self, stage: int) -> None:
        for earlier in range(1, stage):
            if not bool(self.stage_trained[earlier - 1]):
                raise RuntimeError(
                    f"DFA stage {stage} cannot train: stage-{earlier} weights are not loaded "
                    f"(train stage {earlier} first; tools/train_dfa.py stores them in "
                    f"OUTPUT_DIR/stage{earlier}/model_final.pth)"
                )
        if not bool(self.centres_ready[stage - 1]):
            raise RuntimeError(
                f"DFA stage {stage} cannot train: its k-means cluster centres are not set "
                f"(tools/train_dfa.py computes them into OUTPUT_DIR/stage{stage}/centres.pth)"
            )

    def forward(self, batched_inputs: List[Dict]):
        if not self.training:
            return self.inference(batched_inputs)
        stage = self.train_stage
        self._check_ready(stage)
        crops = torch.stack([x["image"] for x in batched_inputs])
        gt = torch.stack([x["landmarks"] for x in batched_inputs]).to(self.device).float()
        labelled = torch.stack([x["labelled"] for x in batched_inputs]).to(self.device)
        visibility = torch.stack([x["visibility"] for x in batched_inputs]).to(self.device)

        prev = route_mask = None
        if stage > 1:
            with torch.no_grad():
                earlier = self.run_cascade(crops, stage - 1)
            prev = earlier[-1]["landmarks"]
            if self.prev_jitter > 0:
                prev = prev + torch.randn_like(prev) * self.prev_jitter
            if stage == 3:
                route_mask = self._route(earlier[-1])
        images = self._normalize_pixels(crops)
        if stage == 3:
            out = self._run_stage3(images, prev, route_mask)
        else:
            out = self._run_network(f"stage{stage}", images, prev)

        with torch.no_grad():
            space = cluster_space(stage, gt, labelled, prev, self.distance_scale)
            target_labels = pseudo_labels(
                space, getattr(self, f"centres_{stage}"), self.temperature
            )
        iteration = get_event_storage().iter
        alpha = aux_loss_weight(iteration, self.visibility_weight, *self.aux_decay_iters)
        beta = aux_loss_weight(iteration, self.label_weight, *self.aux_decay_iters)
        losses = {
            "loss_positions": position_loss(out["landmarks"], gt, labelled),
            "loss_visibility": alpha * visibility_loss(out["visibility"], visibility),
            "loss_labels": beta * label_loss(torch.softmax(out["labels"], dim=1), target_labels),
        }
        storage = get_event_storage()
        storage.put_scalars(aux_weight_visibility=alpha, aux_weight_labels=beta)
        if route_mask is not None:
            storage.put_scalar("routing_easy_fraction", route_mask.float().mean().item())
        return losses

    # ---- inference ---------------------------------------------------------------------------------
    def _crops_of(self, item: Dict) -> torch.Tensor:
        if "crops" in item:
            return item["crops"]
        if "image" not in item:
            raise KeyError("DFA inference input needs 'boxes' and either 'crops' or 'image'")
        image = np.ascontiguousarray(item["image"].permute(1, 2, 0).cpu().numpy())
        boxes = item["boxes"].cpu().numpy().reshape(-1, 4)
        crops = [crop_box(image, b, self.crop_size, self.box_expand) for b in boxes]
        if not crops:
            return torch.zeros(
                (0, image.shape[2], self.crop_size, self.crop_size), dtype=torch.uint8
            )
        return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2)

    @torch.no_grad()
    def inference(self, batched_inputs: List[Dict]) -> List[Dict]:
        crops_list, boxes_list = [], []
        for item in batched_inputs:
            if "boxes" not in item:
                raise KeyError("DFA inference input needs 'boxes' (G, 4) XYXY in image pixels")
            boxes = check_boxes_xyxy(item["boxes"], "boxes", allow_zero_size=True)
            boxes = [sanitize_box(b) for b in boxes.tolist()]  # >= 1 px, as the crops
            boxes = torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4))
            boxes_list.append(boxes)
            crops_list.append(self._crops_of({**item, "boxes": boxes}))
        counts = [len(b) for b in boxes_list]
        crops = torch.cat(crops_list) if crops_list else torch.zeros(0)
        num_stages = min(self.test_stages, self.num_stages)
        outputs = self.run_cascade(crops, num_stages)
        boxes = torch.cat(boxes_list).to(self.device)
        per_stage = [denormalize_landmarks(o["landmarks"], boxes) for o in outputs]
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
