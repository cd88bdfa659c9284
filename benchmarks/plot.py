"""Plot the medians bench.py wrote with --json: docs/img/bench.png (and a markdown table).

    .venv/bin/python benchmarks/plot.py                      # benchmarks/results.json -> docs/img/bench.png
    .venv/bin/python benchmarks/plot.py RESULTS.json OUT.png
    .venv/bin/python benchmarks/plot.py --markdown           # also print the tables as markdown

Grouped horizontal bars on a log scale of ns/op: one group per operation, one bar
per implementation, lmdbcache highlighted; the memoize rows (lmdbcache's
cache.memoize against joblib.Memory) in a panel of their own.  The machine and
the Python the numbers were measured on are in the title.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import LogLocator  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

HIGHLIGHT = "#d62728"
PEER_COLORS = {
    "floor": "#9e9e9e",
    "py-lmdb": "#1f77b4",
    "diskcache": "#2ca02c",
    "sqlite3": "#9467bd",
    "naive": "#8c564b",
    "joblib": "#ff7f0e",
}
LABELS = {"floor": "floor (dict+pickle, in memory)", "naive": "naive py-lmdb (sync per write)"}


def fmt_ns(x: float) -> str:
    if x >= 1_000_000:
        return f"{x / 1e6:.1f} ms"
    if x >= 10_000:
        return f"{x / 1000:.0f} µs"
    if x >= 1000:
        return f"{x / 1000:.1f} µs"
    return f"{x:.0f} ns"


def machine_line(res: dict) -> str:
    m, v, run = res["machine"], res["versions"], res["run"]
    return (f"{m['cpu']} ({m['logical_cpus']} CPUs), {m['python']}, {m['filesystem']}; "
            f"liblmdb {v['liblmdb']}, SQLite {v['sqlite']}; "
            f"n={run['n']:,}, {run['rounds']} rounds{' (quick)' if run['quick'] else ''}, {run['date']}")


def draw_table(ax, table: dict) -> None:
    impls, ops = table["impls"], table["ops"]
    k = len(impls)
    yticks, ylabels = [], []
    for gi, row in enumerate(ops):
        base = gi * (k + 1)
        for bi, name in enumerate(impls):
            y = base + bi
            ns = row["ns"][name]
            is_lc = name == "lmdbcache"
            ax.barh(y, ns, height=0.8, color=HIGHLIGHT if is_lc else PEER_COLORS.get(name, "#777777"),
                    edgecolor="black" if is_lc else "none", linewidth=1.2 if is_lc else 0,
                    label=LABELS.get(name, name) if gi == 0 else None)
            ax.text(ns * 1.08, y, fmt_ns(ns), va="center", fontsize=8,
                    fontweight="bold" if is_lc else "normal")
        yticks.append(base + (k - 1) / 2)
        ylabels.append(row["label"])
    ax.set_yticks(yticks, ylabels)
    ax.invert_yaxis()
    ax.set_xscale("log")
    lo = min(v for row in ops for v in row["ns"].values())
    hi = max(v for row in ops for v in row["ns"].values())
    ax.set_xlim(10 ** math.floor(math.log10(lo)), hi * 6)
    ax.xaxis.set_major_locator(LogLocator(base=10))
    ax.grid(axis="x", which="major", alpha=0.3)
    ax.set_axisbelow(True)
    ax.set_title(table["title"], loc="left", fontsize=10)
    ax.legend(loc="upper right", fontsize=8, frameon=True)


def plot(res: dict, out: str) -> None:
    tables = res["tables"]
    sizes = [len(t["ops"]) * (len(t["impls"]) + 1) for t in tables]
    fig, axes = plt.subplots(len(tables), 1, figsize=(10, 0.22 * sum(sizes) + 2.2),
                             gridspec_kw={"height_ratios": sizes})
    if len(tables) == 1:
        axes = [axes]
    for ax, table in zip(axes, tables):
        draw_table(ax, table)
    axes[-1].set_xlabel(f"{res['unit']} (log scale; shorter is faster)")
    fig.suptitle("lmdbcache against its peers: ns per operation", fontsize=12, fontweight="bold", x=0.01,
                 ha="left")
    fig.text(0.01, 0.005, machine_line(res), fontsize=7, color="#444444", ha="left", va="bottom")
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def markdown(res: dict) -> str:
    """The tables as markdown: ns/op per implementation, then how many times lmdbcache is faster."""
    lines = []
    for table in res["tables"]:
        impls = table["impls"]
        peers = [p for p in impls if p != "lmdbcache"]
        lines.append("| ns/op (median) | " + " | ".join(impls) + " | "
                     + " | ".join(f"{p} / lmdbcache" for p in peers) + " |")
        lines.append("|---|" + "---:|" * (len(impls) + len(peers)))
        for row in table["ops"]:
            lc = row["ns"]["lmdbcache"]
            cells = [f"{row['ns'][p]:,.0f}" for p in impls]
            ratios = [f"{row['ns'][p] / lc:.2f}×" for p in peers]
            lines.append(f"| {row['label']} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="?", default=os.path.join(HERE, "results.json"))
    ap.add_argument("out", nargs="?", default=os.path.join(ROOT, "docs", "img", "bench.png"))
    ap.add_argument("--markdown", action="store_true", help="also print the tables as markdown")
    args = ap.parse_args(argv)
    with open(args.results) as f:
        res = json.load(f)
    plot(res, args.out)
    print(f"plot written to {args.out}")
    if args.markdown:
        print()
        print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
