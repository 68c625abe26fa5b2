"""Scores: per-slice and 3D DSC, SimSiam's collapse, FLARE 2022's DSC and NSD."""
