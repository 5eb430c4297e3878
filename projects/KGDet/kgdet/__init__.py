"""KGDet: keypoint-guided clothing detection for Detectron2. Importing it registers everything."""

from .config import ConfigError, add_kgdet_config, build_config, get_kgdet_cfg
from . import data  # registers the built-in datasets (lazily)
from . import modeling  # registers the KGDet meta-architecture
from . import evaluation
