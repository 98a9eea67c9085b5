"""Backbones, projector/predictor heads, RoI feature extraction."""
