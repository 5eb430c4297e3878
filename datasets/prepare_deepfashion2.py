#!/usr/bin/env python
"""Convert DeepFashion2's raw per-image annotations to the official COCO-style json.

    python datasets/prepare_deepfashion2.py \
        --annos-dir $DETECTRON2_DATASETS/deepfashion2/validation/annos \
        --image-dir $DETECTRON2_DATASETS/deepfashion2/validation/image \
        --output $DETECTRON2_DATASETS/deepfashion2/validation/val-coco_style.json

Writes exactly the official ``evaluation/deepfashion2_to_coco.py`` fields the evaluation uses
(bbox, area = box area, 294 x 3 keypoints, num_keypoints = #(v > 0), category_id, image_id from
the file name, running annotation ids), streamed with a progress bar. Every bad record
(malformed json, landmark count != 3 x n for its category, category id outside 1..13, box with
non-positive size, missing or unreadable image, image whose size does not match its
annotations, ...) is reported by file and field with the expected value, counted, listed in
``<output stem>.report.txt`` next to the output, and its image is skipped. A missing or empty
input folder is an error. Output and report are written atomically (no partial files).

Known problems of the official converter that this script fixes:

1. It does not run as published: ``num_images`` is undefined and the paths are placeholders
   (DeepFashion2 issues #56 and #83). Here the annotation files are discovered in --annos-dir.
2. It loops over ``1..num_images``, so a gap in the numbering or a missing image crashes it.
   Here image_id is read from each file name; a missing image is reported.
3. It builds the whole split in memory and writes only at the end (a crash loses the work, a
   kill leaves a truncated file). Here annotations stream to a temporary file and the output
   is moved into place atomically.
4. It indexes landmarks without checking their count (too few: crash; too many: silently
   truncated) and checks neither category ids, visibility codes nor box sizes.
5. Its category names (``short_sleeved_shirt``, ...) differ from the raw ``category_name``
   strings (``short sleeve top``, ...) (switchablenorms/DeepFashion2 #62). The official
   names are kept (every official COCO-style file and our metadata use them); raw names are
   cross-checked against category_id and disagreements reported.
6. It reads width/height from the image header, ignoring EXIF orientation, which Detectron2's
   ``read_image`` applies (mirroring or rotating the pixels under the annotations). Here every
   image is judged as the model will see it: images with any EXIF orientation other than 1,
   unreadable or truncated images (pixels decoded; ``--no-decode`` reads headers only, faster)
   and images that cannot contain their annotated boxes are reported and skipped.
7. A missing or non-integer ``pair_id``, a missing ``source`` or ``style`` (used only for
   retrieval) costs no garment: warned, integer strings coerced. Two annotation files giving
   the same image id (``1.json``, ``000001.json``) are refused before anything is written.
"""

import argparse
import functools
import sys

from kgdet import cli  # first: importing kgdet hides known third-party import warnings

# isort: split

from kgdet.data.prepare.convert_deepfashion2 import convert_deepfashion2


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--annos-dir", required=True, help="folder of raw NNNNNN.json files")
    parser.add_argument("--image-dir", required=True, help="folder of the NNNNNN.jpg images")
    args = cli.add_conversion_arguments(parser).parse_args(argv)
    convert = functools.partial(convert_deepfashion2, args.annos_dir, args.image_dir)
    return cli.run_conversion("prepare_deepfashion2.py", args, convert)


if __name__ == "__main__":
    sys.exit(main())
