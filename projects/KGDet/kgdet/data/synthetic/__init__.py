"""Built-in synthetic garments: DeepFashion2-like outfits and FLD-layout garments, generated on
first use and cached (:mod:`.datasets`), their keypoint layouts (:mod:`.layouts`) and the
renderer (:mod:`.render`)."""

from . import datasets
from .datasets import *  # the public names of :mod:`.datasets`

__all__ = list(datasets.__all__)
