#!/usr/bin/env python3
"""Draws bench/results/latest.png from latest.json: items/s of ours, raw and peer per row, on a
log scale (run by bench/run.py under a Python that has matplotlib)."""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(json_path, png_path):
    with open(json_path) as f:
        result = json.load(f)
    rows = [r for r in result["rows"] if r.get("ours")]
    labels = [f"{r['backend']} {r['scenario']} {r['size']}B" for r in rows]
    height = max(4, 0.32 * len(rows) + 1.5)
    fig, ax = plt.subplots(figsize=(11, height))
    y = range(len(rows))
    bar = 0.27
    series = [("ours", "ours", "#1f77b4"), ("raw", "raw client", "#7f7f7f"),
              ("peer", "peer (BullMQ / Watermill)", "#ff7f0e")]
    for i, (key, name, color) in enumerate(series):
        values = [r.get(key) or 0 for r in rows]
        ax.barh([v + (i - 1) * bar for v in y], values, height=bar, label=name, color=color)
    for j, r in enumerate(rows):
        if r.get("target_status") in ("met", "missed"):
            ax.text(r["ours"], j - bar, f" {r['target_status']}", va="center", fontsize=7,
                    color="green" if r["target_status"] == "met" else "red")
    ax.set_yticks(list(y))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("items per second (wall clock, log scale)")
    ax.set_title(f"eventbus benchmark matrix ({result['mode']}, {result['generated']})")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
