"""Writer of DeepFashion2-layout COCO-style jsons for tests and loading measurements.

The layout is the official converter's: every image record with its COCO fields, every garment
with ``area``, ``bbox`` (integers, XYWH), ``category_id`` 1..13, ``pair_id``, ``style``,
``num_keypoints``, 294 x 3 integer keypoint values (zeros outside the class block) and one
polygon. Records are written one at a time, so sizes beyond memory can be produced.
"""

import json
import numpy as np
import os
from typing import List, Optional, Sequence, Tuple

from kgdet.data.deepfashion2_meta import (
    DF2_CLASS_NAMES,
    DF2_KEYPOINT_NAMES,
    DF2_KEYPOINT_SLOT_RANGES,
    DF2_NUM_KEYPOINTS,
)

__all__ = ["write_df2_layout_json", "DF2_CATEGORIES"]

DF2_CATEGORIES = [
    {
        "id": i + 1,
        "name": name,
        "supercategory": "clothes",
        "keypoints": list(DF2_KEYPOINT_NAMES),
        "skeleton": [],
    }
    for i, name in enumerate(DF2_CLASS_NAMES)
]


def write_df2_layout_json(
    path: str,
    num_images: int,
    seed: int = 0,
    *,
    garments_per_image: Sequence[int] = (1, 2, 3),
    outside_block: Optional[List[int]] = None,
    drop_fields: Sequence[str] = (),
    float_coordinates: bool = False,
    first_image_id: int = 1,
    image_size: Optional[Tuple[int, int]] = None,
) -> int:
    """Write a DeepFashion2-layout json of ``num_images`` images; returns the garment count.

    Args:
        garments_per_image: choices for the number of garments of an image (uniform).
        outside_block: annotation ids (1-based order) that get one labelled landmark outside
            their class block (what a faulty third-party converter writes).
        drop_fields: annotation fields left out (``area``, ``iscrowd``, ``num_keypoints``).
        float_coordinates: keypoints and boxes with fractional values instead of integers.
        image_size: (width, height) of every image (default: random, 300..799 pixels), e.g. to
            link every file name to one placeholder image.
    """
    rng = np.random.default_rng(seed)
    outside = set(outside_block or ())
    ann_id = 0
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write('{"info": {}, "licenses": [], "images": [')
        for i in range(num_images):
            w, h = int(rng.integers(300, 800)), int(rng.integers(300, 800))
            if image_size is not None:
                w, h = image_size
            image = {
                "coco_url": "",
                "date_captured": "",
                "file_name": f"{first_image_id + i:06d}.jpg",
                "flickr_url": "",
                "id": first_image_id + i,
                "license": 0,
                "width": w,
                "height": h,
            }
            f.write((", " if i else "") + json.dumps(image))
        f.write('], "annotations": [')
        rng = np.random.default_rng(seed + 1)
        for i in range(num_images):
            w, h = 800, 800
            for _ in range(int(rng.choice(garments_per_image))):
                ann_id += 1
                c = int(rng.integers(0, 13))
                x0, y0 = int(rng.integers(0, 200)), int(rng.integers(0, 200))
                bw, bh = int(rng.integers(1, 300)), int(rng.integers(1, 300))
                kps = np.zeros((DF2_NUM_KEYPOINTS, 3))
                start, end = DF2_KEYPOINT_SLOT_RANGES[c]
                n = end - start
                kps[start:end, 0] = rng.integers(x0, x0 + bw + 1, n)
                kps[start:end, 1] = rng.integers(y0, y0 + bh + 1, n)
                kps[start:end, 2] = rng.choice([0, 1, 2], n, p=[0.2, 0.3, 0.5])
                kps[start:end, :2] *= kps[start:end, 2:] > 0
                if float_coordinates:
                    kps[start:end, :2] += np.round(rng.random((n, 2)), 3) * (kps[start:end, 2:] > 0)
                if ann_id in outside:
                    slot = end % DF2_NUM_KEYPOINTS
                    kps[slot] = (x0 + 1, y0 + 1, 2)
                values = kps.reshape(-1)
                keypoints = values.tolist() if float_coordinates else values.astype(int).tolist()
                bbox = [x0, y0, bw, bh]
                if float_coordinates:
                    bbox = [v + 0.25 for v in bbox]
                ann = {
                    "area": bw * bh,
                    "bbox": bbox,
                    "category_id": c + 1,
                    "id": ann_id,
                    "pair_id": i,
                    "image_id": first_image_id + i,
                    "iscrowd": 0,
                    "style": int(rng.integers(0, 3)),
                    "num_keypoints": int((kps[:, 2] > 0).sum()),
                    "keypoints": keypoints,
                    "segmentation": [[x0, y0, x0 + bw, y0, x0 + bw, y0 + bh, x0, y0 + bh]],
                }
                for key in drop_fields:
                    ann.pop(key, None)
                f.write((", " if ann_id > 1 else "") + json.dumps(ann))
            del w, h
        f.write('], "categories": ' + json.dumps(DF2_CATEGORIES) + "}")
    os.replace(tmp, path)
    return ann_id
