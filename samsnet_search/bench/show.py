"""Rich tables of a bench report (CLI only; the library returns plain dicts)."""

from __future__ import annotations

import re
from typing import Any

from rich.console import Console
from rich.table import Table

_SLICE_KEY = re.compile(r"^(c\d+_)?(.+)_s(\d+)$")


def _fmt(value: float) -> str:
    if value == 0 or 1e-3 <= abs(value) < 1e6:
        return f"{value:.4g}"
    return f"{value:.3e}"


# Columns of the per-slice table: (figure stem, header); other per-slice figures go below it.
_ATTN_COLUMNS = (
    ("ref_ms", "ref ms"),
    ("attn_ms", "now ms"),
    ("speedup", "speed-up"),
    ("cpu_speedup", "cpu-time speed-up"),
    ("gflop", "GFLOP"),
    ("mb_moved", "MB moved"),
    ("ref_gflops", "ref GFLOPS"),
    ("attn_gflops", "now GFLOPS"),
    ("attn_gbps", "now GB/s"),
    ("roofline_ms", "roofline ms"),
    ("attn_of_roofline", "now / roofline"),
    ("max_speedup", "max speed-up*"),
    ("attn_peak_mib", "peak MiB"),
)


def attention_table(result: dict[str, Any]) -> list[Table]:
    """Per size: a row per slice count (attention step), then the loop and whole-model figures."""
    tables = []
    figures = result["figures"]
    by_case: dict[str, dict[int, dict[str, float]]] = {}
    for key, value in figures.items():
        m = _SLICE_KEY.match(key)
        if m:
            by_case.setdefault(m.group(1) or "", {}).setdefault(int(m.group(3)), {})[m.group(2)] = value
    roof = (
        f"roofline of this machine, measured in the same run: {_fmt(figures.get('machine_matmul_gflops', 0))} "
        f"GFLOPS matmul, {_fmt(figures.get('machine_copy_gbps', 0))} GB/s copy"
    )
    for index, (prefix, rows) in enumerate(sorted(by_case.items(), key=lambda kv: int(kv[0][1:-1] or 0))):
        size = result["sizes"][index]
        title = (
            f"attention step fwd+bwd (projection, scores, softmax, values, W^O): {size['label']}; "
            f"{size['bins']} bins x {size['frames']} frames x {size['channels']} maps, {size['heads']} heads, "
            f"batch {size['batch']}"
        )
        table = Table(
            title=title, caption=f"* ref / (projection + W^O alone): no attention kernel goes past it. {roof}"
        )
        table.add_column("slices", justify="right")
        table.add_column("L", justify="right")
        for _, header in _ATTN_COLUMNS:
            table.add_column(header, justify="right")
        other = Table(title=f"loop check, whole model ({size['depth']} modules), CPU times")
        other.add_column("figure")
        other.add_column("value", justify="right")
        for n in sorted(rows):
            if "attn_ms" in rows[n]:
                L = str(size["slice_frames"].get(str(n), size["slice_frames"].get(n, "")))
                table.add_row(str(n), L, *(_fmt(rows[n][c]) if c in rows[n] else "" for c, _ in _ATTN_COLUMNS))
            for key, value in rows[n].items():
                if key not in dict(_ATTN_COLUMNS):
                    other.add_row(f"{prefix}{key}_s{n}", _fmt(value))
        tables += [table, other]
    return tables


SEARCH_COLUMNS = (
    "arm",
    "trial-epochs",
    "of grid",
    "CPU-s",
    "wall s",
    "pick",
    "interval",
    "grid SDR",
    "regret",
    "vs grid",
    "target",
)
SEARCH_CAPTION = (
    "trial-epochs: search + selection retraining; pick: the slice count chosen, interval: its avg SDR "
    "interval in the arm's own selection table; grid SDR: the grid's validation avg SDR of the pick; "
    "regret: the grid's best minus that (dB)"
)


def search_rows(result: dict[str, Any]) -> list[list[str]]:
    """One row per arm of the search-efficiency benchmark, in SEARCH_COLUMNS order."""
    rows = []
    for name, arm in result["arms"].items():
        low, high = arm["pick_interval"]
        vs = "best" if arm["grid_best"] else "n.s." if arm["matches_grid"] else "worse"
        target = "-" if name == "grid" else "met" if arm["target_met"] else "NOT met"
        rows.append(
            [
                name,
                f"{arm['trial_epochs']} = {arm['search_trial_epochs']} + {arm['selection_trial_epochs']}",
                f"{100 * arm['epoch_share']:.0f}%",
                f"{arm['cpu_s']:.0f}",
                f"{arm['wall_s']:.0f}",
                str(arm["pick"]),
                f"[{low:.2f}, {high:.2f}]",
                f"{arm['grid_avg_db']:.2f}",
                f"{arm['regret_db']:.2f}",
                vs,
                target,
            ]
        )
    return rows


def search_markdown(result: dict[str, Any]) -> str:
    """The arms table as markdown (for the README and notes)."""
    lines = ["| " + " | ".join(SEARCH_COLUMNS) + " |", "|" + "---|" * len(SEARCH_COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in search_rows(result)]
    return "\n".join(lines) + "\n"


def search_tables(result: dict[str, Any]) -> list[Table]:
    """The arms side by side, then the grid's own per-slice validation table (what the regret is read from)."""
    arms = Table(
        title=f"search efficiency against the paper's grid ({result['seconds']:.0f} s)", caption=SEARCH_CAPTION
    )
    for i, header in enumerate(SEARCH_COLUMNS):
        arms.add_column(header, justify="left" if i == 0 else "right")
    for row in search_rows(result):
        arms.add_row(*row)
    grid = result["arms"]["grid"]
    table = Table(title=f"grid: {grid['table_label']}")
    for header in ("slices", "avg", "interval", "vs winner", "pairs"):
        table.add_column(header, justify="right")
    for rec in grid["table"]:
        table.add_row(
            str(rec["slices"]),
            f"{rec['avg']:.2f}",
            f"[{rec['avg_low']:.2f}, {rec['avg_high']:.2f}]",
            rec["vs_winner"],
            str(rec["pairs"]),
        )
    return [arms, table]


def figures_table(name: str, result: dict[str, Any]) -> Table:
    table = Table(title=f"{name} ({result['seconds']:.0f} s)")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in result["figures"].items():
        table.add_row(key, _fmt(value))
    return table


def strategies_table(result: dict[str, Any]) -> Table:
    """One row per replayed strategy: cost as a share of the 3-seed grid, correct picks, regret."""
    n = result["sizes"]["replays_per_strategy"]
    table = Table(title=f"strategies on the learning-curve table ({n} replays each, {result['seconds']:.0f} s)")
    for column in (
        "strategy",
        "share of grid epochs: median",
        "p90",
        "pick in grid's best set",
        "regret dB: mean",
        "p95",
    ):
        table.add_column(column, justify="left" if column == "strategy" else "right")
    for s in result["strategies"]:
        table.add_row(
            s["name"] + (" (default)" if s["default"] else ""),
            f"{s['share_of_grid_epochs_median']:.0%}",
            f"{s['share_of_grid_epochs_p90']:.0%}",
            f"{s['correct_probability']:.0%}",
            f"{s['mean_regret_db']:.3f}",
            f"{s['p95_regret_db']:.3f}",
        )
    return table


def print_report(report: dict[str, Any], console: Console) -> None:
    m = report["machine"]
    console.print(
        f"machine: {m['cpu']}, {m['cores']} cores, load {m['load_average_1m']} -> "
        f"{m.get('load_average_1m_end')}; torch {m['torch']} ({m['torch_threads']} threads), "
        f"device {m['device']}"
    )
    for name, result in report["benchmarks"].items():
        if name == "attention":
            for table in attention_table(result):
                console.print(table)
        elif name == "search":
            for table in search_tables(result):
                console.print(table)
        elif name == "strategies":
            console.print(strategies_table(result))
        else:
            console.print(figures_table(name, result))
        for note in result.get("notes", []):
            console.print(f"  [dim]{note}[/dim]")
    for name, why in report["skipped"].items():
        console.print(f"skipped {name}: {why}")
