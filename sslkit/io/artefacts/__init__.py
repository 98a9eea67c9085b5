"""sslkit's HDF5 artefact files: one schema for every per-image artefact.

Layout (documented in docs/artefacts.md; this package and that page agree)::

    attrs: format, format_version, sslkit_version, command, params (JSON),
           created (UTC ISO time), complete (True), num_images, + kind-specific
    /images/image_id   (N,)   int64
    /images/file_name  (N,)   vlen utf-8 str (relative to the source root)
    /images/height     (N,)   int32   (original image, upright frame)
    /images/width      (N,)   int32
    /<name>/data       (M, *trailing)   ragged per-image rows, concatenated
    /<name>/offsets    (N+1,) int64     rows of image i: data[offsets[i]:offsets[i+1]]
    /<map>/data        (sum h_i*w_i,) uint16, gzip+shuffle chunked   label maps
    /<map>/offsets     (N+1,) int64
    /<map>/hw          (N, 2) int32     stored size of each label map
    /skipped/file_name (S,) str, /skipped/reason (S,) str

Writers (:mod:`~sslkit.io.artefacts.writer`) stream to a temporary file beside the target and
rename it into place at the end, so a killed writer never leaves a file under the final name;
readers (:mod:`~sslkit.io.artefacts.reader`) also refuse a file whose ``complete`` attribute is
not set. Long jobs stage their progress as chunk files (:mod:`sslkit.io.chunks`) so that a rerun
resumes where a killed one stopped. Nothing outside this package touches the HDF5 objects.
"""

from sslkit.io.artefacts.reader import Artefact
from sslkit.io.artefacts.schema import (
    FORMAT_VERSIONS,
    STANDARD_ATTRS,
    Record,
    check_output,
    command_line,
    peek_format,
)
from sslkit.io.artefacts.writer import ArtefactWriter

__all__ = ["FORMAT_VERSIONS", "STANDARD_ATTRS", "Artefact", "ArtefactWriter", "Record", "check_output",
           "command_line", "peek_format"]
