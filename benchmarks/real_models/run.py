r"""The real-model benchmark: `PYTHONPATH=. python -m benchmarks.real_models.run --nfe 4,6,10,20`.

For every network (the shipped ones in `weights/`, plus the exact Gaussian denoiser of each dataset as a
control): measure its error profile, run DDIM along every candidate grid at every NFE and the 1000-step reference
from the same initial noises, measure path error and Fréchet distances with paired bootstrap intervals, compute
every closed-form prediction, and the Spearman correlations between predicted and measured ranks. Writes
`results/<network>.json`, `results/profiles/<network>.npz` and `results/tables.md` (`report.py`).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from . import data, error_profile, grids, metrics, models, predict, report, sampling  # noqa: E402

RESULTS = Path(__file__).parent / "results"
GRID_CACHE = RESULTS / "optimized_grids.json"
METRICS = ("path", "fd_pix", "fd_feat")


def log(msg: str):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def networks(wanted: str) -> list[str]:
    names = models.available() + [f"{d}_gauss" for d in data.DATASETS]
    if wanted in ("", "all"):
        return names
    chosen = [n.strip() for n in wanted.split(",")]
    unknown = [n for n in chosen if n not in names]
    if unknown:
        raise SystemExit(f"unknown networks {unknown}; available: {names}")
    return chosen


def load_grid_cache(recompute: bool):
    if GRID_CACHE.exists() and not recompute:
        for key, steps in json.loads(GRID_CACHE.read_text()).items():
            dataset, kind, nfe, metric, direction = key.split("/")
            grids._OPTIMIZED[(dataset, kind, int(nfe), metric, direction)] = np.asarray(steps, dtype=np.int64)


def save_grid_cache():
    doc = {"/".join(map(str, k)): v.tolist() for k, v in sorted(grids._OPTIMIZED.items())}
    GRID_CACHE.write_text(json.dumps(doc, indent=0) + "\n")


class Dataset:
    """Per-dataset material shared by its networks."""

    def __init__(self, name: str, n: int, seed: int):
        self.name = name
        self.train, self.test = data.evaluation_data(name)
        self.fit = data.gaussian_fit(self.train)
        self.features = metrics.RandomFeatures(data.load_patches(name).shape, seed=seed).fit(self.train)
        rng = np.random.default_rng(seed + 7)
        self.x_init = rng.standard_normal((n, self.train.shape[1])).astype(np.float32)
        self.train_rows = self.train[rng.choice(self.train.shape[0], n, replace=False)]
        self.profile_train = self.train[rng.choice(self.train.shape[0], 2048, replace=False)]
        self.profile_test = self.test[rng.choice(self.test.shape[0], 2048, replace=False)]


def make_denoiser(name: str, ds: Dataset):
    """`(denoiser, head, lattice kind, raw network or None, metadata)`."""
    if name.endswith("_gauss"):
        return sampling.gaussian_denoiser(ds.fit), "exact", "discrete", None, {"params": 0}
    model, meta = models.load(name)
    den = sampling.NetworkDenoiser(model)
    kind = "flow" if meta["head"] == "flow" else "discrete"

    def raw(x, steps):
        t = (jnp.asarray(steps, dtype=jnp.float32) + 1.0) / sampling.T
        return jax.vmap(model)(models.network_input(model.head, jnp.asarray(x, dtype=jnp.float32), t), t)

    return den, meta["head"], kind, raw, meta


def spearman(pred: dict[str, float], measured: dict[str, float]) -> float:
    names = [k for k in measured if k in pred and np.isfinite(pred[k])]
    if len(names) < 3:
        return float("nan")
    return float(stats.spearmanr([pred[k] for k in names], [measured[k] for k in names]).statistic)


def outlier_fraction(x: np.ndarray, limit: float = 3.0) -> float:
    """Fraction of samples with a pixel beyond +-`limit` (data lie in [-1, 1])."""
    return float(np.mean(np.abs(x).max(axis=1) > limit))


def ranks(values: dict[str, float]) -> dict[str, int]:
    order = sorted(values, key=lambda k: values[k])
    return {k: order.index(k) + 1 for k in values}


def evaluate(name: str, ds: Dataset, nfes: list[int], args) -> dict:
    timing = {}
    den, head, kind, raw, meta = make_denoiser(name, ds)
    lat = sampling.lattice(kind)
    gauss = sampling.gaussian_denoiser(ds.fit)
    t0 = time.perf_counter()
    prof_test = error_profile.measure(den, gauss, ds.fit, ds.profile_test, lat, seed=1)
    prof_train = error_profile.measure(den, gauss, ds.fit, ds.profile_train, lat, seed=2)
    error_profile.save(Path(args.results) / "profiles" / f"{name}.npz", {"held_out": prof_test, "train": prof_train})
    timing["profile_s"] = time.perf_counter() - t0
    bias, second = prof_train.on_all_steps()
    fit = ds.fit
    mctx = predict.make_model_context(fit.eigenvalues, fit.eigenvectors.T @ fit.mean, lat.abar, bias, second)
    ctx = grids.Context(ds.name, name, head, lat, fit, mctx, den, raw, ds.train)

    t0 = time.perf_counter()
    reference = sampling.ddim(den, ds.x_init, sampling.all_steps(), lat)
    timing["reference_s"] = time.perf_counter() - t0
    log(f"{name}: profile {timing['profile_s']:.0f} s, 1000-step reference {timing['reference_s']:.0f} s")

    samples, per_nfe = {}, {}
    timing["grids_s"] = timing["sampling_s"] = timing["predict_s"] = 0.0
    for nfe in nfes:
        t0 = time.perf_counter()
        built, skipped = grids.build_all(ctx, nfe, args.candidates)
        timing["grids_s"] += time.perf_counter() - t0
        for why in skipped.values():
            log(f"{name} NFE {nfe}: skipped a candidate: {why}")
        t0 = time.perf_counter()
        for g, steps in built.items():
            samples[f"{nfe}/{g}"] = sampling.ddim(den, ds.x_init, steps, lat)
        timing["sampling_s"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        predicted = predict.predict_all(fit, lat, mctx, built)
        timing["predict_s"] += time.perf_counter() - t0
        per_nfe[nfe] = {"grids": {g: s.tolist() for g, s in built.items()}, "skipped": skipped, "predicted": predicted}
        log(f"{name}: NFE {nfe}: {len(built)} grids sampled and predicted")

    t0 = time.perf_counter()
    extra = {"1000 steps": reference, "train data": ds.train_rows}
    statistic, point = metrics.quality_statistic(samples, reference, ds.test, ds.features, extra)
    boot = metrics.bootstrap(statistic, ds.x_init.shape[0], ds.test.shape[0], replicates=args.bootstrap, seed=3)
    timing["bootstrap_s"] = time.perf_counter() - t0
    log(f"{name}: bootstrap ({args.bootstrap} replicates) {timing['bootstrap_s']:.0f} s")

    for nfe in nfes:
        entry = per_nfe[nfe]
        names = list(entry["grids"])
        measured, diffs = {}, {}
        for m in METRICS:
            vals = {g: point[f"{m}/{nfe}/{g}"] for g in names}
            measured[m] = {g: metrics.interval(vals[g], boot[f"{m}/{nfe}/{g}"]) for g in names}
            base = [g for g in names if g in grids.BASELINES]
            best = min(base, key=lambda g: vals[g])
            diffs[m] = {
                "best_baseline": best,
                **{
                    g: metrics.interval(vals[g] - vals[best], boot[f"{m}/{nfe}/{g}"] - boot[f"{m}/{nfe}/{best}"])
                    for g in names
                },
            }
        entry["measured"] = {m: {g: list(iv) for g, iv in v.items()} for m, v in measured.items()}
        entry["vs_best_baseline"] = {
            m: {g: (list(iv) if isinstance(iv, tuple) else iv) for g, iv in v.items()} for m, v in diffs.items()
        }
        entry["outlier_fraction"] = {g: outlier_fraction(samples[f"{nfe}/{g}"]) for g in names}
        entry["measured_ranks"] = {m: ranks({g: measured[m][g].value for g in names}) for m in METRICS}
        entry["predicted_ranks"] = {o: ranks(v) for o, v in entry["predicted"].items()}
        entry["spearman"] = {
            o: {m: spearman(entry["predicted"][o], {g: measured[m][g].value for g in names}) for m in METRICS}
            for o in entry["predicted"]
        }
    return {
        "network": name,
        "dataset": ds.name,
        "head": head,
        "lattice": kind,
        "meta": meta,
        "samples": int(ds.x_init.shape[0]),
        "held_out": int(ds.test.shape[0]),
        "bootstrap": args.bootstrap,
        "outlier_fraction_1000_steps": outlier_fraction(reference),
        "fixed_rows": {
            k: {m: list(metrics.interval(point[f"{m}/{k}"], boot[f"{m}/{k}"])) for m in ("fd_pix", "fd_feat")}
            for k in extra
        },
        "profile": {
            "steps": prof_test.steps.tolist(),
            "held_out": {k: v.tolist() for k, v in prof_test.per_pixel().items()},
            "train": {k: v.tolist() for k, v in prof_train.per_pixel().items()},
        },
        "nfe": {str(k): v for k, v in per_nfe.items()},
        "timing": {k: round(v, 1) for k, v in timing.items()},
    }


def dataset_facts(ds: Dataset, nfes: list[int]) -> dict:
    """Spectrum facts and where the KL comes from (per lattice kind)."""
    lam = ds.fit.eigenvalues
    out = {
        "n_train": int(ds.train.shape[0]),
        "n_test": int(ds.test.shape[0]),
        "eigenvalues": {"min": float(lam.min()), "max": float(lam.max()), "median": float(np.median(lam))},
        "modes_below": {str(th): int((lam < th).sum()) for th in (data.DEQUANT_VARIANCE, 1e-4, 1e-3)},
        "kl_fraction_from_small_modes": {},
    }
    for kind in ("discrete", "flow") if ds.name == "rgb8" else ("discrete",):
        lat = sampling.lattice(kind)
        for nfe in nfes:
            key = (ds.name, kind, nfe, "kl", "target_to_sample")
            if key in grids._OPTIMIZED:
                for gname, steps in (("kl", grids._OPTIMIZED[key]), ("trailing", grids.spacing("trailing")(lat, nfe))):
                    fr = predict.kl_mode_fractions(ds.fit, lat, steps)
                    out["kl_fraction_from_small_modes"][f"{kind}/{nfe}/{gname}"] = {str(k): v for k, v in fr.items()}
    return out


def machine() -> dict:
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
            if line.startswith("Model name")
        )
    except (StopIteration, OSError):
        model = platform.processor()
    import os

    return {"cpu": model, "cores": os.cpu_count(), "jax": jax.__version__, "load_at_start": os.getloadavg()[0]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nfe", default="4,6,10,20", help="comma-separated NFE budgets")
    parser.add_argument("--networks", default="all", help="comma-separated names (default: all shipped + *_gauss)")
    parser.add_argument("--candidates", default=None, help="comma-separated candidate names (default: all)")
    parser.add_argument("--samples", type=int, default=4096, help="generated samples per grid")
    parser.add_argument("--bootstrap", type=int, default=100, help="bootstrap replicates")
    parser.add_argument("--recompute-grids", action="store_true", help="re-run gdj.optimize_grid (else cached)")
    parser.add_argument("--results", default=str(RESULTS), help="output folder (default: results/ next to run.py; the "
                        "cache of toolkit-optimized grids always lives there)")
    args = parser.parse_args(argv)
    # One BLAS thread: on a shared 2-core machine multi-threaded OpenBLAS ran the bootstrap's covariances 20x slower.
    with threadpool_limits(limits=1, user_api="blas"):
        run(args)


def run(args):
    results = Path(args.results)
    args.candidates = args.candidates.split(",") if args.candidates else None
    nfes = [int(n) for n in args.nfe.split(",")]
    (results / "profiles").mkdir(parents=True, exist_ok=True)
    load_grid_cache(args.recompute_grids)
    start = time.perf_counter()
    info = {"machine": machine(), "args": vars(args), "datasets": {}}
    datasets: dict[str, Dataset] = {}
    for name in networks(args.networks):
        dname = name.split("_")[0]
        if dname not in datasets:
            datasets[dname] = Dataset(dname, args.samples, seed=0)
        log(f"evaluating {name}")
        result = evaluate(name, datasets[dname], nfes, args)
        (results / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
        save_grid_cache()
    for dname, ds in datasets.items():
        info["datasets"][dname] = dataset_facts(ds, nfes)
    info["total_s"] = round(time.perf_counter() - start, 1)
    (results / "run_info.json").write_text(json.dumps(info, indent=1) + "\n")
    (results / "tables.md").write_text(report.render(results))
    log(f"done in {info['total_s']:.0f} s; tables in {results / 'tables.md'}")


if __name__ == "__main__":
    main()
