#!/usr/bin/env python
"""Time and peak memory of registering DeepFashion2, the first training batch and evaluation,
on simulated data of DeepFashion2's size (or a chosen fraction of it).

Each step runs in a fresh process; the table gives its wall time and peak RSS, the evaluation's
box / keypoint AP, and the ratios of the package's evaluator against the reference one
(``TEST.OFFICIAL_COCO_EVAL True``, stock pycocotools) and of its registration against
Detectron2's ``load_coco_json`` where those fit in memory. The code is in
``kgdet.benchmark.deepfashion2_scale``; this file is its command line.

    # full DeepFashion2 sizes (train 191,961 images, validation 32,153, 100 detections each)
    python tools/benchmark_deepfashion2_scale.py --work-dir /tmp/df2_scale --json scale.json
    # a quick run
    python tools/benchmark_deepfashion2_scale.py --train-images 500 --val-images 500 \
        --eval-sizes 500 --detections 100
"""

import sys

import kgdet  # noqa: F401  (first: importing kgdet hides known third-party import warnings)

# isort: split

from kgdet.benchmark.deepfashion2_scale import main

if __name__ == "__main__":
    sys.exit(main())
