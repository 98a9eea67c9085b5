"""Datasets sslkit builds itself: the offline demo / benchmark scenes (:mod:`sslkit.datasets.demo`)."""
