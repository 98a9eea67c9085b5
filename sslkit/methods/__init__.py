"""Pretraining methods, one file each, on the :class:`~sslkit.methods.base.Method` contract.

``METHODS`` maps the ``--method`` name to its class. Adding a method: its file, an entry here,
a doc page and tests.
"""

from sslkit.errors import UserError
from sslkit.methods.base import Method
from sslkit.methods.byol import BYOL
from sslkit.methods.densecl import DenseCL
from sslkit.methods.detcon import DetConB, DetConS
from sslkit.methods.mcl import MCL
from sslkit.methods.mocov2 import MoCoV2
from sslkit.methods.orl import ORL
from sslkit.methods.regioncl import RegionCLD, RegionCLM, RegionCLS
from sslkit.methods.simclr import SimCLR
from sslkit.methods.simsiam import SimSiam
from sslkit.methods.univip import UniVIP

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (
    BYOL, MoCoV2, SimCLR, SimSiam, DenseCL, DetConS, DetConB, ORL, UniVIP, MCL, RegionCLM, RegionCLS, RegionCLD)}


def get_method(name: str) -> type[Method]:
    """The class registered as ``name``; a :class:`~sslkit.errors.UserError` naming the choices otherwise."""
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}", None, f"choose one of: {', '.join(METHODS)}")
    return METHODS[name]


__all__ = ["METHODS", "Method", "get_method"]
