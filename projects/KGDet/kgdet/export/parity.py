"""Parity of an exported graph with the PyTorch model: detections compared as matched sets.

Two detections lists from the same image can hold the same detections in another order (the
graph's top-k or sort breaks near-tied scores differently), so they are never compared by
position. :func:`match_detections` pairs them greedily: in the reference's score order, each
reference detection takes the unmatched exported detection of the same class whose box is
nearest (largest absolute coordinate difference). Differences are then measured over the pairs.
"""

from typing import List, Tuple
import torch

from detectron2.structures import Instances

__all__ = ["match_detections", "compare_detections"]


def match_detections(reference: Instances, exported: Instances) -> Tuple[List[int], List[int]]:
    """Greedy matching of two detection sets (see the module docstring).

    Args:
        reference, exported: with ``pred_boxes`` (N, 4) / (M, 4) XYXY, ``scores`` and
            ``pred_classes``.

    Returns:
        (reference indices, exported indices) of the matched pairs, in reference score order;
        at most min(N, M) pairs (a detection whose class has no exported detection left stays
        unmatched).
    """
    ref_boxes, out_boxes = reference.pred_boxes.tensor, exported.pred_boxes.tensor
    dist = (ref_boxes[:, None, :] - out_boxes[None, :, :]).abs().amax(-1)
    same = reference.pred_classes[:, None] == exported.pred_classes[None, :]
    dist = torch.where(same, dist, torch.full_like(dist, float("inf")))
    ref_idx, out_idx, used = [], [], torch.zeros(len(exported), dtype=torch.bool)
    for i in torch.argsort(reference.scores, descending=True, stable=True).tolist():
        row = dist[i].masked_fill(used, float("inf"))
        if not len(row) or not torch.isfinite(row.min()):
            continue
        j = int(row.argmin())
        used[j] = True
        ref_idx.append(i)
        out_idx.append(j)
    return ref_idx, out_idx


def compare_detections(reference: Instances, exported: Instances) -> str:
    """One line: detection counts, pairs matched as sets, and the largest differences of boxes,
    scores and keypoints (x, y) over the pairs."""
    text = f"detections: PyTorch {len(reference)}, exported {len(exported)}"
    if not len(reference) or not len(exported):
        return text
    ri, oi = match_detections(reference, exported)
    text += f"; matched as sets (same class, nearest box): {len(ri)}"
    if not ri:
        return text
    a, b = reference[ri], exported[oi]
    diffs = {
        "boxes": (a.pred_boxes.tensor - b.pred_boxes.tensor).abs().max(),
        "scores": (a.scores - b.scores).abs().max(),
    }
    if a.has("pred_keypoints") and b.has("pred_keypoints"):
        diffs["keypoints"] = (a.pred_keypoints[..., :2] - b.pred_keypoints[..., :2]).abs().max()
    return (
        text
        + "; max abs difference over the pairs "
        + ", ".join(f"{k} {float(v):.2e}" for k, v in diffs.items())
    )
