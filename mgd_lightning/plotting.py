"""Plots of the channel matching over training (matplotlib, no Lightning): what the demos, and anything else that
keeps a :class:`~mgd_lightning.distill.callback.MGDMatchingCallback`'s ``history``, draw of it.

:func:`plot_matching` draws the mean matching cost per tap at each update (cf. paper Fig. 5) and the fraction of
student channels whose match changed (Fig. 6).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["plot_matching"]

#: (history key prefix, title, y label, file name) of each plot of :func:`plot_matching`
_PLOTS = (
    ("cost_tap", "Matching cost per tap over training (cf. paper Fig. 5)", "mean cost per matched pair",
     "matching_cost.png"),
    ("changed_tap", "Student channels whose match changed (cf. paper Fig. 6)", "fraction of channels",
     "match_changes.png"),
)


def plot_matching(history: list[dict], out: Path, x: str = "epoch") -> list[Path]:
    """Plots of a :class:`MGDMatchingCallback`'s ``history`` in ``out``: the mean matching cost per tap at each update
    (``matching_cost.png``) and the fraction of student channels whose match changed (``match_changes.png``);
    ``x``: ``"epoch"`` or ``"step"``, the updates' position on the horizontal axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    taps = sorted({k.removeprefix("cost_tap") for r in history for k in r if k.startswith("cost_tap")}, key=int)
    xs = [r[x] for r in history]
    paths = []
    for key, title, ylabel, fname in _PLOTS:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for t in taps:
            ax.plot(xs, [r[f"{key}{t}"] for r in history], marker="o", label=f"tap {t}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(f"{x} (matching update at its start)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / fname, dpi=120)
        plt.close(fig)
        paths.append(out / fname)
    return paths
