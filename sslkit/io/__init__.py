"""Inputs and artefacts: images, COCO json, HDF5 artefact files, checkpoints, atomic writes."""
