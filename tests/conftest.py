"""Shared fixtures: a handful of real photos (bundled in the scikit-image wheel), tiny."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REAL_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")


def real_photo(name: str, max_side: int = 128) -> np.ndarray:
    """A real photo from skimage.data (no network: these ship inside the wheel), downscaled."""
    import skimage.data

    arr = getattr(skimage.data, name)()
    img = Image.fromarray(arr).convert("RGB")
    img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return np.asarray(img)


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory) -> Path:
    """A folder of 5 real photos (JPEG, ≤128 px), one in a subfolder."""
    d = tmp_path_factory.mktemp("photos")
    (d / "sub").mkdir()
    for i, name in enumerate(REAL_PHOTOS):
        target = d / "sub" if i == 4 else d
        Image.fromarray(real_photo(name)).save(target / f"{name}.jpg", quality=90)
    return d


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny models run fastest on one thread, and parallel test jobs do not fight for the cores.
    Session-wide, so module fixtures and tests compute with the same thread count (bitwise checks)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def run_cli(*args) -> int:
    """Run ``sslkit ARGS`` in-process through the real entry point; returns its exit status."""
    from sslkit.cli import main

    try:
        main([str(a) for a in args])
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def one_line_error(capsys, *args) -> str:
    """Run ``sslkit ARGS`` expecting a user error: exit 2 and one ``error: …`` line, no traceback."""
    capsys.readouterr()
    assert run_cli(*args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def free_port() -> int:
    """A free TCP port on the loopback interface (for gloo process groups in tests)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_on_fixed_batch(model, batch, steps: int = 12, lr: float = 0.05) -> list[dict[str, float]]:
    """``steps`` SGD steps of a method on one fixed batch (the engine's optimizer and after-step
    hook); each step's outputs as floats. Callers check that the loss is finite and falls."""
    from sslkit.engine.optim import build_optimizer

    opt = build_optimizer(model, "sgd", lr, 0.0)
    outs = []
    for step in range(steps):
        out = model(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        model.on_after_step(step, steps)
        outs.append({k: float(v.detach()) if hasattr(v, "detach") else float(v) for k, v in out.items()})
    return outs


def assert_learns(outs: list[dict[str, float]]) -> None:
    """Finite losses whose last three average below 80% of the first three."""
    import math

    import numpy as np

    losses = [o["loss"] for o in outs]
    assert all(math.isfinite(x) for x in losses), losses
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
