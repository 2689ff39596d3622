"""The savings report's chart: each night's kWh against the dusk-to-dawn baseline, as a PNG and in a terminal.

`nightly(rep, site)` sums the report's nights (one site, or all of them); `terminal(rep)` draws one
line per night with a bar for the energy used and a mark where the baseline stands; `png(rep, path)`
draws the same with matplotlib (bars for the energy, the baseline as a step line, the savings in
the title).
"""

from __future__ import annotations

from pathlib import Path

BLOCKS = " ▏▎▍▌▋▊▉█"


def nightly(rep: dict, site: str | None = None) -> list[tuple[str, float, float]]:
    """(night, energy kWh, baseline kWh) per night, summed over the report's sites (or `site`)."""
    out: dict[str, list[float]] = {}
    for n in rep["nights"]:
        if site is None or n["site"] == site:
            e = out.setdefault(n["night"], [0.0, 0.0])
            e[0] += n["energy_kwh"]
            e[1] += n["baseline_kwh"]
    return [(night, e, b) for night, (e, b) in sorted(out.items())]


def _bar(value: float, scale: float, width: int) -> str:
    eighths = round(value / scale * width * 8) if scale > 0 else 0
    full, part = divmod(max(0, min(eighths, width * 8)), 8)
    return "█" * full + (BLOCKS[part] if part else "")


def terminal(rep: dict, site: str | None = None, width: int = 40) -> str:
    rows = nightly(rep, site)
    if not rows:
        return "(no night in the period)"
    top = max(max(e, b) for _, e, b in rows) or 1.0
    lines = [f"{'night':<10}  {'kWh':>7}  {'energy used, | = baseline (100 % dusk to dawn)':<{width}}  {'baseline':>8}"]
    for night, e, b in rows:
        bar = _bar(e, top, width)
        mark = round(b / top * width) if b > 0 else None
        cells = list(bar.ljust(width))
        if mark is not None:
            m = min(mark, width - 1)
            cells[m] = "|" if cells[m] == " " else cells[m]
            for i in range(len(bar), m):
                if cells[i] == " ":
                    cells[i] = "·"
        lines.append(f"{night:<10}  {e:7.2f}  {''.join(cells)}  {b:8.2f}")
    e_tot, b_tot = sum(r[1] for r in rows), sum(r[2] for r in rows)
    saved = 100.0 * (b_tot - e_tot) / b_tot if b_tot > 0 else 0.0
    lines.append(f"{'total':<10}  {e_tot:7.2f}  {'':<{width}}  {b_tot:8.2f}   saved {saved:.0f} %")
    return "\n".join(lines)


def png(rep: dict, path: str | Path, site: str | None = None) -> Path:
    """Write the chart as a PNG (matplotlib, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = nightly(rep, site)
    if not rows:
        raise ValueError("no night in the period: nothing to draw")
    labels = [r[0][5:] for r in rows]  # MM-DD
    energy = [r[1] for r in rows]
    baseline = [r[2] for r in rows]
    e_tot, b_tot = sum(energy), sum(baseline)
    where = site or ", ".join(s["site"] for s in rep["sites"])
    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=100)
    x = range(len(rows))
    ax.bar(x, energy, color="#2b7bba", label="energy used")
    ax.step(x, baseline, where="mid", color="#d95f02", linewidth=2, label="baseline: 100 % from dusk to dawn")
    ax.set_xticks(list(x))
    ax.set_xticklabels(labels, rotation=90 if len(rows) > 16 else 0, fontsize=8)
    ax.set_ylabel("kWh per night")
    ax.set_ylim(0, max(max(energy), max(baseline)) * 1.2 or 1)
    saved = b_tot - e_tot
    pct = 100.0 * saved / b_tot if b_tot > 0 else 0.0
    ax.set_title(
        f"{where}: {e_tot:.1f} kWh used, {b_tot:.1f} kWh baseline, saved {saved:.1f} kWh ({pct:.0f} %), "
        f"{saved * rep['tariff_eur_kwh']:.2f} EUR",
        fontsize=10,
    )
    ax.legend(loc="upper center", ncol=2, fontsize=8, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out
