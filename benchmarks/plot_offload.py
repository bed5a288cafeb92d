#!/usr/bin/env python3
"""The plot of bench_offload.py's results: per link setting (a row), the time, device peak and host peak RSS of each
offload strategy (grouped bars, one bar per VAE mode; the device peak split into weights and activations; failed
configurations are left out and named in the title).

    pip install -e ".[bench]"   # matplotlib, a benchmark-only dependency
    python benchmarks/plot_offload.py [benchmarks/results/offload.json] [--out benchmarks/results/offload.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
MIB = 2.0**20
STRATEGIES = ("none", "model", "sequential", "sequential-no-prefetch", "auto")
VAE_MODES = ("plain", "slicing", "tiling")
PANELS = (("time_s", "time per call (s, median)", 1.0), ("device_peak", "device peak (MiB)", MIB),
          ("host_peak_rss", "host peak RSS (MiB)", MIB))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", nargs="?", default=str(HERE / "results" / "offload.json"))
    ap.add_argument("--out", default=None, help="the PNG (default: the JSON's path with .png)")
    args = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(Path(args.json).read_text())
    sections = data["sections"]
    fig, axes = plt.subplots(len(sections), len(PANELS), figsize=(13, 3.4 * len(sections)), squeeze=False)
    for row, (link, sec) in enumerate(sections.items()):
        rows = sec["rows"]
        strategies = [s for s in STRATEGIES if any(r["strategy"] == s for r in rows)]
        failed = sorted({f"{r['strategy']} ({r['vae']})" for r in rows if "error" in r})
        modes = [v for v in VAE_MODES if any(r["vae"] == v for r in rows)]
        width = 0.8 / len(modes)
        for col, (key, label, scale) in enumerate(PANELS):
            ax = axes[row][col]
            for i, vae in enumerate(modes):
                found = [(j, r) for j, s in enumerate(strategies) for r in rows
                         if r["strategy"] == s and r["vae"] == vae and "error" not in r]  # fmt: skip
                xs = [j + (i - (len(modes) - 1) / 2) * width for j, _ in found]
                color = f"C{i}"
                if key == "device_peak":  # weights, with the activations stacked on them (hatched)
                    weights = [r["device_peak_weights"] / scale for _, r in found]
                    acts = [r["device_peak_activations"] / scale for _, r in found]
                    ax.bar(xs, weights, width, color=color, label=f"VAE {vae}")
                    ax.bar(xs, acts, width, bottom=weights, color=color, alpha=0.45, hatch="//")
                else:
                    ax.bar(xs, [r[key] / scale for _, r in found], width, color=color, label=f"VAE {vae}")
            ax.set_xticks(range(len(strategies)))
            ax.set_xticklabels([s.replace("-no-", "\nno ") for s in strategies], fontsize=8)
            ax.set_ylabel(label, fontsize=8)
            ax.tick_params(axis="y", labelsize=8)
            title = f"{link} link ({sec['bandwidth'] / 1e9:.3g} GB/s)"
            if col == 0 and failed:
                title += "\nfailed: " + ", ".join(failed)
            if col == 1:
                title += "\n(solid: weights, hatched: activations)"
            ax.set_title(title, fontsize=9)
            if row == 0 and col == 0:
                ax.legend(fontsize=7, loc="lower left")
    meta = data["meta"]
    fig.suptitle(f"cogvideo_c offload strategies on the emulated accelerator ({meta['machine']['cpu']}, "
                 f"{meta['threads']} threads; commit {meta['commit'][:10]})", fontsize=10)  # fmt: skip
    fig.tight_layout()
    out = Path(args.out) if args.out else Path(args.json).with_suffix(".png")
    fig.savefig(out, dpi=72)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
