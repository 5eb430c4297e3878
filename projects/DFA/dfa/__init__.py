"""DFA: Deep Fashion Alignment (Liu et al., ECCV 2016) for Detectron2.

Importing the package registers the ``DFA`` meta-architecture; ``add_dfa_config(cfg)`` adds the
``MODEL.DFA`` keys. Training runs stage by stage (:func:`train_all_stages`, tools/train_dfa.py).
"""

from .config import add_dfa_config
from .meta_arch import DFA
from .data import DFACropMapper, DFAImageMapper, build_dfa_test_loader, build_dfa_train_loader
from .predictor import DFAPredictor, refine_detections
from .training import train_all_stages, train_stage

__all__ = [
    "add_dfa_config",
    "DFA",
    "DFACropMapper",
    "DFAImageMapper",
    "build_dfa_train_loader",
    "build_dfa_test_loader",
    "DFAPredictor",
    "refine_detections",
    "train_all_stages",
    "train_stage",
]
