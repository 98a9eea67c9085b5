"""``sslkit plot RUN_DIR… -o curves.png``: training curves from ``log.jsonl``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from sslkit.cli.common import stdout
from sslkit.errors import UserError

HELP = """Plot the training curves of one or more pretraining runs.

Reads RUN_DIR/log.jsonl (written by `sslkit pretrain`) and writes one PNG with a panel for the
loss terms, the learning rate and, for EMA methods, the target momentum; several runs are
overlaid, labelled by folder name.

\b
Example:  sslkit plot runs/byol -o byol.png
          sslkit plot runs/byol runs/simclr -o compare.png
"""

#: logged keys that are not curves of their own panel
_NOT_METRICS = {"step", "epoch", "lr", "momentum", "img_per_s", "elapsed_s", "time"}


def read_log(run_dir: Path) -> list[dict]:
    path = run_dir / "log.jsonl" if run_dir.is_dir() else run_dir
    if not path.is_file():
        raise UserError("no log.jsonl here", run_dir, "pass a run directory written by `sslkit pretrain`")
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line torn by an interrupted write
    if not rows:
        raise UserError("log.jsonl has no entries yet", path)
    return rows


def plot_runs(run_dirs: list[Path], output: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [(d.name or str(d), read_log(d)) for d in run_dirs]
    metrics = sorted({k for _, rows in runs for r in rows for k, v in r.items()
                      if k not in _NOT_METRICS and isinstance(v, (int, float))},
                     key=lambda k: (not k.startswith("loss"), k))
    has_momentum = any("momentum" in r for _, rows in runs for r in rows)
    panels = metrics + ["lr"] + (["momentum"] if has_momentum else [])
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.6 * len(panels)), sharex=True, squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, key in zip(axes[:, 0], panels, strict=True):
        for i, (label, rows) in enumerate(runs):
            pts = [(r["step"], r[key]) for r in rows if key in r]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, label=label, linewidth=1.2, color=colors[i % len(colors)],
                        marker="o" if len(pts) < 30 else None, markersize=3)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        if key == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    axes[-1, 0].set_xlabel("step")
    if len(runs) > 1:
        from matplotlib.lines import Line2D

        axes[0, 0].legend(handles=[Line2D([], [], color=colors[i % len(colors)], label=label)
                                   for i, (label, _) in enumerate(runs)], fontsize="small")
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=120)
    plt.close(fig)
    return output


def register(app: typer.Typer) -> None:
    @app.command("plot", help=HELP)
    def plot_cmd(
        run_dirs: list[Path] = typer.Argument(..., help="Run directories (or log.jsonl files)."),
        output: Path = typer.Option(Path("curves.png"), "--output", "-o", help="PNG to write."),
    ):
        path = plot_runs(run_dirs, output)
        stdout.print(f"wrote {path}")
