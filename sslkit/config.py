"""Settings of every stage that has them (pretrain, sample-views, detect, semisup, linprobe): one
typed, layered resolver.

A stage declares its settings as ``{name: Key}`` (a *spec*). :func:`resolve` overlays, in order,

    the spec's defaults (or a checkpoint's saved settings)  <  --config FILE  <  --set KEY=VALUE  <  flags

coercing every value to the key's type, checking choices, and answering an unknown key with the
closest known one ("did you mean"). On resume, :func:`frozen_changes` lists the run-defining keys
(those not marked ``runtime``) that a new layer tried to change.
"""

from __future__ import annotations

import difflib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sslkit.errors import UserError


@dataclass(frozen=True)
class Key:
    default: Any
    kind: type  # bool, int, float, str, or list (a list of ints: YAML list or "1,2,3")
    help: str
    choices: tuple | None = None
    runtime: bool = False  # may change when resuming
    optional: bool = False  # None is a valid value
    path: bool = False  # a file or folder: made absolute (and checked) when resolved
    item: type = int  # the element type of a list key (int, float or str)


def load_config_file(path: str | os.PathLike) -> dict:
    """A flat mapping from a ``.yaml``/``.yml`` or ``.toml`` file."""
    p = Path(path)
    if not p.is_file():
        raise UserError("no such config file", p)
    try:
        if p.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(p.read_text())
        elif p.suffix.lower() in (".yaml", ".yml"):
            data = yaml.safe_load(p.read_text())
        else:
            raise UserError("config files must be .yaml, .yml or .toml", p)
    except (yaml.YAMLError, ValueError) as e:
        raise UserError(f"cannot parse the config ({str(e).splitlines()[0]})", p) from e
    if data is None:
        return {}
    if not isinstance(data, dict) or any(isinstance(v, dict) for v in data.values()):
        raise UserError("a config file is a flat mapping of key: value", p, "see docs/pretrain.md")
    return data


def parse_set(items: list[str]) -> dict:
    """``["lr=0.3", "sync_bn=false"]`` → ``{"lr": 0.3, "sync_bn": False}`` (values parsed as YAML)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--set {item!r} is not KEY=VALUE")
        k, v = item.split("=", 1)
        out[k.strip().replace("-", "_")] = yaml.safe_load(v) if v.strip() else None
    return out


def coerce(name: str, key: Key, value: Any, where: str) -> Any:
    if value is None:
        if key.optional:
            return None
        raise UserError(f"{name} cannot be empty", where)
    try:
        if key.kind is bool:
            if isinstance(value, bool):
                out = value
            elif isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
                out = value.lower() in ("true", "yes", "on", "1")
            else:
                raise ValueError
        elif key.kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            out = int(value)
        elif key.kind is float:
            if isinstance(value, bool):
                raise ValueError
            out = float(value)  # also "1e-4", which YAML 1.1 reads as a string
            if not math.isfinite(out):
                raise ValueError
        elif key.kind is list:
            items = value.replace(":", ",").split(",") if isinstance(value, str) else value
            if isinstance(items, (bool, int, float)) or not items:
                raise ValueError
            out = []
            for v in items:
                if isinstance(v, bool) or (key.item is int and isinstance(v, float) and not v.is_integer()):
                    raise ValueError
                out.append(key.item(v.strip()) if isinstance(v, str) else key.item(v))
        else:
            if not isinstance(value, str):
                raise ValueError
            out = value
    except (ValueError, TypeError, AttributeError):
        what = key.kind.__name__
        if key.kind is list:
            what = f"comma-separated list of {dict([(int, 'integers'), (float, 'numbers')]).get(key.item, 'names')}"
        raise UserError(f"{name}={value!r} is not a valid {what}", where) from None
    if key.choices and out not in key.choices:
        raise UserError(f"{name}={out!r} is not one of {', '.join(map(str, key.choices))}", where)
    return out


def _unknown(name: str, keys: dict[str, Key], where: str, owner: str, listing: str) -> UserError:
    close = difflib.get_close_matches(name, list(keys), n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"see `{listing}`"
    return UserError(f"{owner} has no setting {name!r}", where, hint)


def apply_layer(cfg: dict, keys: dict[str, Key], layer: dict, where: str, owner: str, listing: str = "") -> dict:
    """``cfg`` updated with ``layer``'s validated values; ``owner`` names the stage in errors, ``listing`` the
    command that lists its settings."""
    out = dict(cfg)
    for name, value in layer.items():
        if name not in keys:
            raise _unknown(name, keys, where, owner, listing or f"sslkit {owner} --print-config")
        out[name] = coerce(name, keys[name], value, where)
    return out


def resolve(keys: dict[str, Key], layers: list[tuple[str, dict]], base: dict | None = None, owner: str = "this stage",
            listing: str = "") -> dict:
    """The spec's defaults (or ``base``, a checkpoint's settings) overlaid by ``layers`` ``[(where, mapping), …]``.

    Keys of the spec missing from ``base`` (added by a newer sslkit) take their defaults."""
    cfg = {k: v.default for k, v in keys.items()} if base is None else dict(base)
    for k, v in keys.items():
        cfg.setdefault(k, v.default)
    for where, layer in layers:
        cfg = apply_layer(cfg, keys, layer, where, owner, listing)
    return cfg


def frozen_changes(keys: dict[str, Key], old: dict, new: dict) -> list[str]:
    """Keys that define the run (not ``runtime``) and differ between ``old`` (the checkpoint's) and ``new``."""
    return [k for k, key in keys.items() if not key.runtime and k in old and old.get(k) != new.get(k)]


def frozen_error(keys: dict[str, Key], old: dict, new: dict, path, hint: str) -> UserError | None:
    """The one-line error for a resume that changes run-defining keys, or None."""
    changed = frozen_changes(keys, old, new)
    if not changed:
        return None
    diffs = ", ".join(f"{k}: {old.get(k)!r} → {new.get(k)!r}" for k in changed)
    return UserError(f"cannot change {diffs} when resuming", path, hint)


def absolute_paths(cfg: dict, keys: dict[str, Key]) -> dict:
    """``cfg`` with every set path key (``Key.path``) made absolute; a missing file is a UserError."""
    out = dict(cfg)
    for name, key in keys.items():
        if key.path and out.get(name):
            p = Path(out[name]).expanduser()
            if not p.exists():
                raise UserError(f"no such file or folder ({name})", p)
            out[name] = str(p.resolve())
    return out


def default_workers(procs_per_node: int) -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        cpus = os.cpu_count() or 1
    return max(0, min(8, cpus // max(1, procs_per_node) - 1))


def dump_yaml(cfg: dict, header: str = "") -> str:
    body = yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False)
    return (header + body) if header else body
