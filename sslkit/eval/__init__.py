"""Evaluation of frozen or fine-tuned backbones.

Linear probing (``sslkit linprobe``) is split into small pieces that are usable on their own:

* :mod:`sslkit.eval.data` — labelled splits: class folders, COCO objects, COCO multi-label;
* :mod:`sslkit.eval.features` — frozen-backbone features per stage, cached in an
  ``sslkit.features`` HDF5 artefact keyed by weights, data and transform;
* :mod:`sslkit.eval.linear`, :mod:`sslkit.eval.knn`, :mod:`sslkit.eval.svm` — the three
  classifiers on cached features; :mod:`sslkit.eval.metrics` — top-k accuracy and VOC mAP;
* :mod:`sslkit.eval.linprobe` — the protocol that ties them together.
"""
