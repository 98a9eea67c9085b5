"""Pure array operations several layers share: box geometry (:mod:`~sslkit.ops.boxes`) and exact
nearest-neighbour search (:mod:`~sslkit.ops.knn`). Functions of their inputs only; nothing here
imports another sslkit module."""
