"""Markdown tables from the results: `PYTHONPATH=. python -m benchmarks.real_models.report` rewrites `results/tables.md`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

METRIC_NAMES = {"path": "path RMS", "fd_pix": "FD pixels", "fd_feat": "FD features"}
HEADLINE = ("kl", "kl_rev", "w2", "w2_free", "path_gauss", "model_w2", "model_w2b", "model_path", "select", "select_net")
PROFILE_STEPS = (0, 49, 199, 499, 799, 949, 999)


def load(results: Path) -> tuple[dict, list[dict]]:
    info_path = results / "run_info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    runs = [json.loads(p.read_text()) for p in sorted(results.glob("*.json")) if p.name not in ("run_info.json", "optimized_grids.json")]
    order = {"eps": 0, "x0": 1, "v": 2, "flow": 3, "exact": 4}
    runs.sort(key=lambda r: (r["dataset"], order.get(r["head"], 9)))
    return info, runs


def _fmt(x: float, digits: int = 3) -> str:
    if x is None or not np.isfinite(x):
        return "–"
    return f"{x:.{digits}g}"


def _iv(v) -> str:
    return f"{_fmt(v[0])} [{_fmt(v[1])}, {_fmt(v[2])}]"


def nfes_of(runs) -> list[str]:
    return sorted({k for r in runs for k in r["nfe"]}, key=int)


def spearman_table(runs, metric: str) -> str:
    objectives = list(runs[0]["nfe"][nfes_of(runs)[0]]["spearman"])
    head = "| objective | " + " | ".join(r["network"] for r in runs) + " | mean (networks) | mean (trained only) |"
    lines = [head, "|---|" + "---:|" * (len(runs) + 2)]
    for o in objectives:
        cells, trained = [], []
        for r in runs:
            vals = [r["nfe"][n]["spearman"][o][metric] for n in r["nfe"]]
            m = float(np.nanmean(vals))
            cells.append(m)
            if r["head"] != "exact":
                trained.append(m)
        lines.append(
            f"| {o} | " + " | ".join(_fmt(c, 2) for c in cells) + f" | {_fmt(np.nanmean(cells), 2)} | {_fmt(np.nanmean(trained), 2)} |"
        )
    return "\n".join(lines)


def spearman_per_nfe(run) -> str:
    nfes = list(run["nfe"])
    objectives = list(run["nfe"][nfes[0]]["spearman"])
    metrics = list(METRIC_NAMES)
    head = "| objective | " + " | ".join(f"{METRIC_NAMES[m]} @ {n}" for m in metrics for n in nfes) + " |"
    lines = [head, "|---|" + "---:|" * (len(metrics) * len(nfes))]
    for o in objectives:
        vals = [run["nfe"][n]["spearman"][o][m] for m in metrics for n in nfes]
        lines.append(f"| {o} | " + " | ".join(_fmt(v, 2) for v in vals) + " |")
    return "\n".join(lines)


def headline_table(runs, metric: str) -> str:
    """Best baseline vs the optimized grids: value and ratio to the best baseline, with the difference interval."""
    lines = [
        "| network | NFE | best baseline | its value | "
        + " | ".join(f"{h} (ratio; diff 95% CI)" for h in HEADLINE if any(h in r["nfe"][n]["grids"] for r in runs for n in r["nfe"]))
        + " | best of all |",
    ]
    shown = [h for h in HEADLINE if any(h in r["nfe"][n]["grids"] for r in runs for n in r["nfe"])]
    lines.append("|---|---:|---|---:|" + "---|" * len(shown) + "---|")
    for r in runs:
        for n, e in r["nfe"].items():
            meas = e["measured"][metric]
            diff = e["vs_best_baseline"][metric]
            best = diff["best_baseline"]
            bval = meas[best][0]
            cells = []
            for h in shown:
                if h not in meas:
                    cells.append("–")
                    continue
                d = diff[h]
                mark = "**" if d[2] < 0 else ""
                cells.append(f"{mark}{_fmt(meas[h][0] / bval, 3)}{mark} ({_fmt(d[1], 2)}, {_fmt(d[2], 2)})")
            overall = min(meas, key=lambda g: meas[g][0])
            lines.append(f"| {r['network']} | {n} | {best} | {_fmt(bval)} | " + " | ".join(cells) + f" | {overall} |")
    return "\n".join(lines)


SUMMARY = ("kl", "w2", "w2_free", "path_gauss", "model_w2b", "model_path", "select", "select_net")
TOOLKIT = ("kl", "w2", "w2_free", "path_gauss", "model_w2", "model_w2b", "model_path", "select", "select_net")
"""The toolkit's recommendations (closed-form, model-aware prototypes, `gdj.select_timesteps`)."""
FAMILIES = {"eps": "ε", "x0": "x0", "v": "v", "flow": "flow", "exact": "Gaussian control"}


def summary_table(runs, metric: str) -> str:
    """Per network and NFE: the best fixed baseline, and each recommended grid as ratio to it (rank among all)."""
    shown = [h for h in SUMMARY if any(h in r["nfe"][n]["grids"] for r in runs for n in r["nfe"])]
    lines = ["| network | NFE | best baseline | " + " | ".join(shown) + " | best of all |"]
    lines.append("|---|---:|---|" + "---:|" * len(shown) + "---|")
    for r in runs:
        for n, e in r["nfe"].items():
            meas, rk = e["measured"][metric], e["measured_ranks"][metric]
            best = e["vs_best_baseline"][metric]["best_baseline"]
            bval = meas[best][0]
            cells = [f"{meas[h][0] / bval:.2f} ({rk[h]})" if h in meas else "–" for h in shown]
            top = min(meas, key=lambda g: meas[g][0])
            lines.append(f"| {r['network']} | {n} | {best} {_fmt(bval)} | " + " | ".join(cells) + f" | {top} |")
    return "\n".join(lines)


def spearman_means(runs) -> str:
    """Spearman ρ of every prediction against every measured metric: mean over NFE, then over networks."""
    objectives = list(runs[0]["nfe"][nfes_of(runs)[0]]["spearman"])
    cols = [(m, trained) for m in METRIC_NAMES for trained in (False, True)]
    head = "| prediction | " + " | ".join(f"{METRIC_NAMES[m]} ({'trained' if t else 'all'})" for m, t in cols) + " |"
    lines = [head, "|---|" + "---:|" * len(cols)]
    for o in objectives:
        cells = []
        for m, trained in cols:
            per_net = [
                np.nanmean([r["nfe"][n]["spearman"][o][m] for n in r["nfe"]])
                for r in runs
                if not (trained and r["head"] == "exact")
            ]
            cells.append(_fmt(float(np.nanmean(per_net)), 2))
        lines.append(f"| {o} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def within_table(runs, metric: str, tol: float = 1.05, min_nfe: int = 6) -> str:
    """Per network family: in how many (network, NFE >= `min_nfe`) cells each toolkit grid is within `tol` of the best
    fixed baseline by `metric`, and its worst ratio there."""
    shown = [h for h in TOOLKIT if any(h in r["nfe"][n]["grids"] for r in runs for n in r["nfe"])]
    lines = ["| family (networks) | " + " | ".join(shown) + " |", "|---|" + "---:|" * len(shown)]
    for head, label in FAMILIES.items():
        picked = [r for r in runs if r["head"] == head]
        if not picked:
            continue
        cells = []
        for h in shown:
            ok = total = 0
            worst = 0.0
            for r in picked:
                for n, e in r["nfe"].items():
                    if int(n) < min_nfe or h not in e["measured"][metric]:
                        continue
                    best = e["vs_best_baseline"][metric]["best_baseline"]
                    ratio = e["measured"][metric][h][0] / e["measured"][metric][best][0]
                    total += 1
                    ok += ratio <= tol
                    worst = max(worst, ratio)
            cells.append(f"{ok}/{total} (max {worst:.2f})" if total else "–")
        names = ", ".join(r["network"] for r in picked)
        lines.append(f"| {label} ({names}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def target_check(runs, metrics=("fd_feat", "fd_pix"), nfes=("6", "10", "20"), tol=1.10) -> str:
    """How often each recommended grid is within `tol` of the best baseline on the x0- and v-prediction networks."""
    shown = [h for h in SUMMARY if any(h in r["nfe"][n]["grids"] for r in runs for n in r["nfe"])]
    lines = ["| grid | " + " | ".join(f"{METRIC_NAMES[m]}: within {round((tol - 1) * 100)} %" for m in metrics) + " |"]
    lines.append("|---|" + "---:|" * len(metrics))
    picked = [r for r in runs if r["head"] in ("x0", "v")]
    for h in shown:
        cells = []
        for m in metrics:
            ok = total = 0
            for r in picked:
                for n in nfes:
                    e = r["nfe"].get(n)
                    if e is None or h not in e["measured"][m]:
                        continue
                    best = e["vs_best_baseline"][m]["best_baseline"]
                    total += 1
                    ok += e["measured"][m][h][0] <= tol * e["measured"][m][best][0]
            cells.append(f"{ok}/{total}")
        lines.append(f"| {h} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ranks_table(runs, metric: str) -> str:
    names = list(runs[0]["nfe"][nfes_of(runs)[0]]["grids"])
    head = "| network | NFE | " + " | ".join(names) + " |"
    lines = [head, "|---|---:|" + "---:|" * len(names)]
    for r in runs:
        for n, e in r["nfe"].items():
            rk = e["measured_ranks"][metric]
            lines.append(f"| {r['network']} | {n} | " + " | ".join(str(rk.get(g, "–")) for g in names) + " |")
    return "\n".join(lines)


def full_table(run, nfe: str) -> str:
    e = run["nfe"][nfe]
    names = list(e["grids"])
    preds = ("KL(d|s)", "W2", "W2 bound+net", "path+net")
    head = "| grid | steps | path RMS | FD pixels | FD features | outliers | " + " | ".join(f"rank by {p}" for p in preds) + " |"
    lines = [head, "|---|---|---|---|---|---:|" + "---:|" * len(preds)]
    for g in names:
        steps = e["grids"][g]
        st = ", ".join(map(str, steps)) if len(steps) <= 10 else ", ".join(map(str, steps[:6])) + ", …, " + ", ".join(map(str, steps[-3:]))
        m = e["measured"]
        pr = " | ".join(str(e["predicted_ranks"].get(p, {}).get(g, "–")) for p in preds)
        out = e.get("outlier_fraction", {}).get(g)
        lines.append(
            f"| {g} | {st} | {_iv(m['path'][g])} | {_iv(m['fd_pix'][g])} | {_iv(m['fd_feat'][g])} | {_fmt(out, 2)} | {pr} |"
        )
    for k, v in run["fixed_rows"].items():
        out = run.get("outlier_fraction_1000_steps") if k == "1000 steps" else None
        lines.append(f"| *{k}* | | | {_iv(v['fd_pix'])} | {_iv(v['fd_feat'])} | {_fmt(out, 2)} | |")
    return "\n".join(lines)


def profile_table(runs) -> str:
    head = "| network | " + " | ".join(f"t={t}" for t in PROFILE_STEPS) + " | x0 RMS at t=999: net / exact |"
    lines = [
        "Per-pixel mean squares on held-out patches: `net−gauss` = E‖D_net − D_gauss‖²/d, `net` = E‖D_net − x0‖²/d, "
        "`gauss` = E‖D_gauss − x0‖²/d (Gaussian MMSE).",
        "",
        head,
        "|---|" + "---|" * (len(PROFILE_STEPS) + 1),
    ]
    for r in runs:
        if r["head"] == "exact":
            continue
        steps = r["profile"]["steps"]
        h = r["profile"]["held_out"]
        cells = []
        for t in PROFILE_STEPS:
            i = steps.index(t)
            cells.append(f"{_fmt(h['net_vs_gauss'][i], 2)} / {_fmt(h['mse_net'][i], 2)} / {_fmt(h['mse_gauss'][i], 2)}")
        i = steps.index(999)
        cells.append(f"{_fmt(np.sqrt(h['mse_net'][i]), 3)} / {_fmt(np.sqrt(h['mse_gauss'][i]), 3)}")
        lines.append(f"| {r['network']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render(results: Path) -> str:
    info, runs = load(results)
    out = ["# Real-model benchmark: tables", ""]
    if info:
        m = info["machine"]
        out += [
            f"Machine: {m['cpu']}, {m['cores']} cores, jax {m['jax']}, load average at start {m['load_at_start']:.1f}; "
            f"total {info['total_s']:.0f} s. Arguments: `{info['args']}`.",
            "",
        ]
        for d, f in info.get("datasets", {}).items():
            out.append(f"- **{d}**: {f['n_train']} training / {f['n_test']} held-out patches; eigenvalues {f['eigenvalues']}; modes below thresholds {f['modes_below']}; fraction of KL(d|s) from small modes {f['kl_fraction_from_small_modes']}")
        out.append("")
    out += ["## Error profiles", "", profile_table(runs), ""]
    for metric, title in METRIC_NAMES.items():
        out += [f"## Spearman ρ (predicted vs measured {title}), mean over NFE", "", spearman_table(runs, metric), ""]
    for metric in ("fd_feat", "fd_pix", "path"):
        out += [
            f"## Summary by {METRIC_NAMES[metric]}: recommended grids as ratio to the best fixed baseline "
            "(rank among all grids)",
            "",
            summary_table(runs, metric),
            "",
        ]
    out += ["## Spearman ρ, mean over NFE and networks (all, or trained networks only)", "", spearman_means(runs), ""]
    for metric in ("fd_feat", "fd_pix", "path"):
        out += [
            f"## Within 5 % of the best fixed baseline by {METRIC_NAMES[metric]} at NFE ≥ 6, per network family",
            "",
            "Cells: (network, NFE) pairs where the grid is at most 1.05 × the best fixed baseline / all pairs, and the "
            "largest ratio.",
            "",
            within_table(runs, metric),
            "",
        ]
    out += [
        "## Targets: within 10 % of the best baseline at NFE 6, 10, 20 on the x0- and v-prediction networks",
        "",
        target_check(runs),
        "",
    ]
    for metric, title in METRIC_NAMES.items():
        out += [
            f"## {title}: best baseline vs optimized grids",
            "",
            "Ratio = grid / best fixed baseline; in parentheses the 95 % paired-bootstrap interval of the difference "
            "(grid − best baseline); **bold** = significantly better than the best baseline.",
            "",
            headline_table(runs, metric),
            "",
        ]
    for metric, title in METRIC_NAMES.items():
        out += [f"## Measured ranks by {title} (1 = best)", "", ranks_table(runs, metric), ""]
    out += ["## Per network: Spearman ρ per NFE, and full tables", ""]
    for r in runs:
        out += [f"### {r['network']} ({r['head']}, {r['lattice']}); timing {r['timing']}", "", spearman_per_nfe(r), ""]
        for n in r["nfe"]:
            out += [f"#### {r['network']}, NFE {n}", "", full_table(r, n), ""]
    return "\n".join(out) + "\n"


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results", default=str(Path(__file__).parent / "results"), help="results folder")
    results = Path(parser.parse_args(argv).results)
    (results / "tables.md").write_text(render(results))
    print(f"wrote {results / 'tables.md'}")


if __name__ == "__main__":
    main()
