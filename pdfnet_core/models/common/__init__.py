"""Layers shared by more than one family: the detection-style Swin v1 and small conv/norm blocks."""
