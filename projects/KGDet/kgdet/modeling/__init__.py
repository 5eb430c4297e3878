"""KGDet model: meta-architecture, head, assignment, losses."""
from .deform_conv import KGDeformConv
