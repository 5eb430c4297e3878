"""KGDet model: meta-architecture, heads, assignment, losses, backbone."""

from .backbone import KGDetFPN, build_kgdet_resnet_fpn_backbone  # registers the backbone
from .cascade_head import CascadeHead
from .deform_conv import KGDeformConv
from .head import KGDetHead, build_kgdet_head
from .meta_arch import KGDet  # registers the meta-architecture
from .reppoints_head import RepPointsHead, RepPointsKpHead

__all__ = [
    "KGDet",
    "CascadeHead",
    "KGDetHead",
    "RepPointsHead",
    "RepPointsKpHead",
    "build_kgdet_head",
    "KGDeformConv",
    "KGDetFPN",
    "build_kgdet_resnet_fpn_backbone",
]
