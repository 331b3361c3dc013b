"""`make bench-drift`: detection rate of every drift detector, the combined monitor and the plain
BBSD-KS baseline over shift scenarios x affected fraction δ x window size n x seeds; false alarms
on clean windows; label-free accuracy estimate vs realized accuracy.

Reference = the 5k validation split (never trained on); windows come from the 10k test set (never
trained on). Writes bench/results/drift.json and bench/results/drift.md.

    .venv/bin/python bench/bench_drift.py [--quick] [--model-dir DIR] [--fashion-dir DIR]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console

sys.path.insert(0, str(Path(__file__).parent))

from drift_data import Pool, build_pool, find_fashion, get_model, load_idx_images
from drift_estimate import ATC, gap_windows
from drift_run import BASELINE, COMBINED, RULES, Rates, Record, make_baseline, make_monitor, run_window
from drift_summary import GAP_SCENARIOS, build_tables, checks
from mnistops.demo.scenarios import SCENARIOS, Scenario, foreign
from mnistops.monitor.drift import DEFAULT_DETECTORS, Sample
from mnistops.registry.profile import build_profile
from mnistops.settings import Settings
from mnistops.training.data import load_mnist, split_train_val

RESULTS = Path(__file__).parent / "results"
FULL_NS = (10, 20, 50, 100, 200, 500, 1000)
FAR_NS = (100, 500)  # acceptance: >= 200 clean windows each


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="reduced grid for development (not for acceptance)")
    p.add_argument("--model-dir", type=Path, help="reuse this model folder (trained into it if empty)")
    p.add_argument("--fashion-dir", type=Path, help="folder with Fashion-MNIST idx files (never downloads)")
    p.add_argument("--alpha", type=float, default=0.01, help="overall false-alarm level per window")
    p.add_argument("--seeds", type=int, help="seeds per cell (default 5; 2 with --quick)")
    p.add_argument("--far-windows", type=int, help="clean windows at n=100 and n=500 (default 200)")
    p.add_argument("--pool", type=int, default=5000, help="test images transformed per scenario+seed")
    p.add_argument(
        "--exact-mmd",
        action="store_true",
        help="MMD reference of 1000 at every n (production default; slower)",
    )
    p.add_argument("--scenarios", nargs="+", help="only these shift scenarios (development)")
    p.add_argument("--ns", type=int, nargs="+", help="only these window sizes (development)")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    return p.parse_args(argv)


def shift_scenarios(args: argparse.Namespace, console: Console) -> tuple[list[Scenario], str]:
    """All shared shift scenarios, plus Fashion-MNIST if it is on disk."""
    scen = [s for name, s in SCENARIOS.items() if name != "clean"]
    path, note = find_fashion(args.fashion_dir)
    if path is None:
        console.print(f"[yellow]notice:[/] Fashion-MNIST scenario skipped ({note}; not downloading)")
        note = f"skipped: {note}"
    else:
        scen.append(Scenario("fashion_mnist", foreign(load_idx_images(path))))
        note = f"included from {path}"
    if args.scenarios:
        scen = [s for s in scen if s.name in args.scenarios]
    return scen, note


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(width=140)  # wide tables stay readable in logs and pipes
    t_start, cpu_start = time.perf_counter(), time.process_time()
    seeds = args.seeds or (2 if args.quick else 5)
    ns = tuple(args.ns) if args.ns else (10, 50, 200, 500) if args.quick else FULL_NS
    deltas = (0.1, 0.5, 1.0)
    far_windows = args.far_windows or (50 if args.quick else 200)
    other_clean = 20 if args.quick else 50  # clean windows at the other n (false-alarm rate per n)
    gap_count = 20 if args.quick else 100  # n=1000 windows per gap scenario
    settings = Settings()
    mnist = load_mnist(settings.data_path)
    split = split_train_val(mnist)
    model, origin = get_model(args.model_dir, mnist)
    console.print(f"model: {origin}")
    profile = build_profile(model, split.val_x, split.val_y)
    T = profile.temperature
    ref = Sample(
        probs=profile.probs, logits=profile.logits, embeddings=profile.embeddings, images=profile.images
    )
    test_x, test_y = mnist.test_images.numpy(), mnist.test_labels.numpy()
    clean = Pool.compute(model, test_x, T)
    console.print(
        f"reference: {profile.n} validation images, T={T:.3f}; targets: {len(test_y)} test images; "
        f"test accuracy {(clean.probs.argmax(1) == test_y).mean():.4f}"
    )
    scenarios, fashion_note = shift_scenarios(args, console)
    monitors = {n: make_monitor(ref, n, args.alpha, not args.exact_mmd) for n in sorted({*ns, *FAR_NS, 1000})}
    baseline = make_baseline(ref, args.alpha)
    atc = ATC.fit(profile.probs.astype(np.float64), profile.labels)
    records: list[Record] = []
    gaps: dict[str, list[dict[str, float]]] = {}

    # --- clean windows: false alarms (and the estimate gap on clean data) ------------------------
    t0 = time.perf_counter()
    clean_pool = build_pool(SCENARIOS["clean"], model, clean, test_y, T, 0, len(test_y))
    for n in sorted({*ns, *FAR_NS}):
        count = far_windows if n in FAR_NS else other_clean
        rng = np.random.default_rng([0, n, 12345])
        for i in range(count):
            s, _, _ = clean_pool.window(n, 0.0, rng)
            records.append(run_window(monitors[n], baseline, s, "clean", 0.0, i))
    gaps["clean"] = [
        g for seed in range(seeds) for g in gap_windows(clean_pool, atc, seed, gap_count // seeds)
    ]
    console.print(
        f"clean: {sum(r.scenario == 'clean' for r in records)} windows in {time.perf_counter() - t0:.0f} s"
    )

    # --- shifted windows -------------------------------------------------------------------------
    for sc in scenarios:
        t0 = time.perf_counter()
        for seed in range(seeds):
            sp = build_pool(sc, model, clean, test_y, T, seed, args.pool)
            for d_i, delta in enumerate(deltas):
                for n in ns:
                    rng = np.random.default_rng([seed, n, d_i, 777])
                    s, _, _ = sp.window(n, delta, rng)
                    records.append(run_window(monitors[n], baseline, s, sc.name, delta, seed))
            if sc.name in GAP_SCENARIOS:
                gaps.setdefault(sc.name, []).extend(gap_windows(sp, atc, seed, gap_count // seeds))
        console.print(f"{sc.name}: {time.perf_counter() - t0:.0f} s")

    methods = (*DEFAULT_DETECTORS, COMBINED, BASELINE, *RULES)
    rates = Rates(args.alpha, methods)
    rates.add(records)
    shift_names = [s.name for s in scenarios]
    tables = build_tables(rates, shift_names, ns, deltas, gaps, args.alpha)
    check_table, passed = checks(rates, shift_names, ns, gaps, far_windows, args.alpha)
    tables.append(check_table)
    elapsed, cpu = time.perf_counter() - t_start, time.process_time() - cpu_start
    load = os.getloadavg()[0]
    from drift_report import markdown, render

    render(console, tables)
    grid = (
        f"{len(shift_names)} shift scenarios x δ {list(deltas)} x n {list(ns)} x {seeds} seeds; "
        f"{far_windows} clean windows at n={list(FAR_NS)}; alpha {args.alpha}; Fashion-MNIST {fashion_note}"
    )
    timing = f"wall {elapsed:.0f} s, CPU {cpu:.0f} s, load average {load:.1f} on {os.cpu_count()} cores"
    console.print(f"grid: {grid}\n{timing} ({len(records)} windows)")
    args.out.mkdir(parents=True, exist_ok=True)
    doc = {
        "config": {
            "quick": args.quick,
            "alpha": args.alpha,
            "seeds": seeds,
            "ns": list(ns),
            "deltas": list(deltas),
            "scenarios": shift_names,
            "fashion_mnist": fashion_note,
            "far_windows": far_windows,
            "pool": args.pool,
            "exact_mmd": args.exact_mmd,
            "model": origin,
            "temperature": T,
            "wall_seconds": round(elapsed, 1),
            "cpu_seconds": round(cpu, 1),
            "load_average": round(load, 2),
        },
        "tables": [t.to_dict() for t in tables],
        "passed": passed,
        "gaps": gaps,
        "windows_file": f"{'drift_quick' if args.quick else 'drift'}_windows.json.gz",
    }
    stem = "drift_quick" if args.quick else "drift"
    (args.out / f"{stem}.json").write_text(json.dumps(doc, indent=1))
    # every window's p-values (for re-analysis without re-running), compressed: ~1.5 MB as plain JSON
    with gzip.open(args.out / f"{stem}_windows.json.gz", "wt") as fh:
        json.dump([r.to_dict() for r in records], fh)
    pre = f"## Drift benchmark (`make bench-drift`)\n\n{grid}. Model: {origin}. {timing}."
    (args.out / f"{stem}.md").write_text(markdown(tables, pre))
    console.print(f"wrote {args.out}/{stem}.json, {stem}.md and {stem}_windows.json.gz")
    return 0 if args.quick or all(passed.values()) else 1  # full grid: non-zero when a check fails


if __name__ == "__main__":
    raise SystemExit(main())
