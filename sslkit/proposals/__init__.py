"""Unsupervised regions computed once per dataset: selective-search boxes (ORL, UniVIP) and
Felzenszwalb–Huttenlocher / spatial-grid label maps (DetCon).

* :mod:`sslkit.proposals.filters` — ORL's box filter, ``BoxFilter`` (min size, ratio, greedy suppression in order).
* :mod:`sslkit.proposals.selective_search`, :mod:`sslkit.proposals.masks` — one image in, boxes or label maps out.
* :mod:`sslkit.proposals.algorithms` — the per-image work of each ``--algo`` and the fields it writes.
* :mod:`sslkit.proposals.driver` — the worker pool over a dataset, on :mod:`sslkit.io.chunks` (resume) and
  :mod:`sslkit.io.shards` (``--shard``/``--merge``).

Artefact fields and conventions are documented in docs/proposals.md.
"""
