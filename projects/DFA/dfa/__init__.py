"""DFA: Deep Fashion Alignment (FLD paper) for Detectron2."""
