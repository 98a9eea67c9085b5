"""View samplers of the object-level methods: what two views of an image show, and which regions they
share; and the offline view stages (:mod:`sslkit.views.stage`) that compute them once per dataset."""

from sslkit.errors import UserError


def check_box_source(kind: str | None, proposals, coco) -> str:
    """Where the candidate boxes come from, checked: ``proposals`` (``--proposals FILE``, the default)
    or ``gt`` (``--coco FILE``), exactly one of the two files given. Returns the kind."""
    kind = kind or "proposals"
    if kind not in ("proposals", "gt"):
        raise UserError(f"--source {kind!r} is not proposals or gt")
    if kind == "proposals" and (proposals is None or coco is not None):
        raise UserError("--source proposals needs --proposals FILE (and no --coco)", None,
                        "make it with: sslkit propose IMAGES -o props.h5; or use --source gt --coco FILE")
    if kind == "gt" and (coco is None or proposals is not None):
        raise UserError("--source gt needs --coco FILE (a COCO instances json with the boxes) and no --proposals")
    return kind
