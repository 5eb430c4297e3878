#!/usr/bin/env python
"""Convert one split of FLD (DeepFashion Fashion Landmark Detection) to COCO-style json.

    python datasets/prepare_fld.py --root $DETECTRON2_DATASETS/fld --split val \
        --output $DETECTRON2_DATASETS/fld/annotations/fld_val.json

``--root`` holds the release as unpacked: ``Anno/list_bbox.txt``, ``Anno/list_landmarks.txt``,
``Eval/list_eval_partition.txt`` and the images (``img/img_00000001.jpg``, ...). Output: the 3
classes Upper / Lower / Whole (= clothes_type 1 / 2 / 3), 8 shared keypoint slots (left/right
collar, sleeve, waistline, hem), FLD visibility remapped to COCO's convention (FLD 0 visible ->
2, 1 occluded -> 1, 2 truncated -> 0), and on each annotation the raw ``fld_visibility`` codes
(slots the clothes type does not have carry FLD's padding code 0) and the ``variation_type``
(docs/DESIGN.md §16.4).

Every bad record (clothes type outside 1..3, landmark list whose length is not 3 x 8, box with
non-positive size, missing, unreadable or truncated image (pixels are decoded unless
``--no-decode``), image with an EXIF orientation other than 1 (Detectron2 would mirror or rotate
its pixels), image whose size does not match the lists, ...) is reported
by file, line and field with the expected value, counted, listed in
``<output stem>.report.txt`` next to the output, and skipped. A broken list file (missing, no
record count, wrong header, record count mismatch) is an error. Writes are atomic.

FLD has no official converter (KGDet's is not published); there are no official OKS sigmas, so
FLD is evaluated with box AP plus NE/PDL, not keypoint AP.
"""

import argparse
import functools
import sys

from kgdet import cli  # first: importing kgdet hides known third-party import warnings

# isort: split

from kgdet.data.prepare.convert_fld import FLD_SPLITS, convert_fld


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True, help="FLD folder with Anno/, Eval/ and img/")
    parser.add_argument("--split", required=True, choices=FLD_SPLITS)
    args = cli.add_conversion_arguments(parser).parse_args(argv)
    convert = functools.partial(convert_fld, args.root, args.split)
    return cli.run_conversion("prepare_fld.py", args, convert)


if __name__ == "__main__":
    sys.exit(main())
