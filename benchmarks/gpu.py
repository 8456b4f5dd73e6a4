"""Step two on a GPU: the CUDA paths of inference, of training and of a Dask worker that
advertises a GPU, timed against the CPU of the same machine.

Made for a lent GPU machine that has torch but not the rest of msnl's stack, so its input is
exported here first, and the check runs in parts that each need only some packages:

    .venv/bin/python benchmarks/gpu.py export --data /path/to/train-data --out .gpu
    python3 benchmarks/gpu.py inference --store .gpu/store       # zarr, xarray, distributed
    python3 benchmarks/gpu.py dask --store .gpu/store            # the same
    python3 benchmarks/gpu.py train --patches .gpu/patches.npz   # torchio
    python3 benchmarks/gpu.py fit --patches .gpu/patches.npz --out model.pt --config '{"lr_step_epochs": 8}'

`export` copies the step-one results of the real pairs (no scans, no visit images but the two
stored FLAIRs, which weights trained with `flair_input=intensities` read) into a small store,
and writes a sample of training patches (all of them with `--pairs 0 --with-real`; none when
`--data` holds no cohort) to one compressed file, with FLAIR channels as `--flair-input` says
(default: the shipped weights'). `--step-one KEY=VALUE` reads or makes step-one results of
another config, as for `msnl train`. `train` times epochs of the shipped weights' recipe;
`fit` trains one model as `msnl train` would, on the exported patches less those of
`--exclude`d sources, and writes its weights file.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

if TYPE_CHECKING:
    from msnl.config import StepOneConfig

# The CNN reads the cohort table and the step-one results (patches, and the stored FLAIRs when
# its weights take intensities), not scans, corrected visits or grey levels.
_LEFT_BEHIND = {"scans", "corrected", "reports", ".staging", "levels1", "levels2"}


def _copy_results(source: Path, out: Path) -> None:
    """The store's root, cohort table and step-one results, without scans or grey levels."""
    shutil.copytree(source, out, ignore=lambda folder, names: [n for n in names if n in _LEFT_BEHIND])


def export(data: Path, out: Path, pairs_wanted: int, seed: int, with_real: bool, flair_input: str | None,
           cfg: StepOneConfig) -> None:
    from msnl.inference import load_weights
    from pipelines.train import collect, prepare_pairs
    from storage.training_data import work_store

    flair_input = flair_input or load_weights(None)[1].flair_input

    real = ROOT.parent / "shared" / "data" / "lesjak-longitudinal"
    real_pairs = prepare_pairs([real], data / "work", cfg, progress=False)  # step one, unless stored
    _copy_results(work_store(data / "work", real), out / "store")
    cohorts = sorted(p for p in data.iterdir() if p.is_dir() and p.name.startswith(("sim-train", "sim-real")))
    pairs = prepare_pairs(cohorts, data / "work", cfg, progress=False)
    if pairs_wanted:
        pairs = [pairs[i] for i in np.random.default_rng(seed).choice(len(pairs), min(pairs_wanted, len(pairs)), replace=False)]
    if with_real:
        pairs += real_pairs
    if not pairs:
        print(f"export: {out / 'store'}; no training patches ({data} has no sim-train or sim-real cohort; --with-real adds the real pairs)")
        return
    sample = collect(pairs, flair_input=flair_input)
    np.savez_compressed(
        out / "patches.npz",
        patches=np.concatenate([p.ravel() for p in sample.patches]).astype(np.float32),
        truths=np.concatenate([t.ravel() for t in sample.truths]),
        shapes=np.array([p.shape for p in sample.patches]),
        infratentorial=np.array(sample.infratentorial),
        sources=np.array(sample.sources),
        own_hits=np.array(sample.own_hits),
        flair_input=np.array(flair_input),
    )
    print(f"export: {out / 'store'} and {len(sample)} patches of {len(pairs)} pairs ({flair_input}) in {out / 'patches.npz'}")


def _exported_flair_input(path: Path) -> str:
    with np.load(path) as saved:
        return str(saved["flair_input"]) if "flair_input" in saved else "grey_levels"


def _load_patches(path: Path, exclude: list[str] | None = None, flair_input: str | None = None):
    """The exported patches as a TrainingSet; refuses them when their FLAIR channels are not
    the `flair_input` the model will be trained for."""
    from msnl.training import TrainingSet

    exported = _exported_flair_input(path)
    if flair_input is not None and flair_input != exported:
        raise SystemExit(f"{path}: its patches hold {exported}, the config asks for {flair_input}; "
                         f"export again with --flair-input {flair_input}")
    with np.load(path) as saved:  # each lookup decompresses, so once per array
        patches, truths, shapes, infratentorial, sources, own_hits = (
            saved[k] for k in ("patches", "truths", "shapes", "infratentorial", "sources", "own_hits"))
    data, at, truth_at = TrainingSet(), 0, 0
    for shape, infra, source, own_hit in zip(shapes, infratentorial, sources, own_hits):
        size, voxels = int(np.prod(shape)), int(np.prod(shape[1:]))
        if not any(e in str(source) for e in exclude or []):
            data.add(patches[at:at + size].reshape(shape), truths[truth_at:truth_at + voxels].reshape(shape[1:]), bool(infra), str(source),
                     bool(own_hit))
        at, truth_at = at + size, truth_at + voxels
    return data


def _device_name(device: str) -> str:
    import torch

    return torch.cuda.get_device_name(0) if device == "cuda" else device


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def inference(store: Path, repeats: int, accel: str) -> None:
    import torch

    from msnl.config import StepOneConfig
    from msnl.inference import load_weights, predict_patches
    from msnl.scan import LabelMap
    from msnl.step_two import run_step_two
    from storage.pairs import read_candidates, read_pair_array, read_pair_attrs
    from storage.results import intervals

    print(f"inference: {_device_name(accel)}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads available")
    models = {d: load_weights(None, torch.device(d)) for d in (accel, "cpu")}
    rows = []
    for subject, a, b in intervals(store):
        table, patches = read_candidates(store, subject, a, b, flair_input=models[accel][1].flair_input,
                                         context_voxels=models[accel][1].context_voxels)
        attrs = read_pair_attrs(store, subject, a, b)
        grid = LabelMap(read_pair_array(store, subject, a, b, "brain") > 0, np.asarray(attrs["affine"]))
        masks, times = {}, {}
        for name, device, threads in (("accel", accel, None), ("cpu-2", "cpu", 2), ("cpu-all", "cpu", torch.get_num_threads())):
            model, cfg, _ = models[device]
            if threads:
                torch.set_num_threads(threads)
            run = lambda: run_step_two(table, patches, grid, model, cfg, StepOneConfig(), torch.device(device))  # noqa: E731
            masks[name] = run().mask.data  # also the warm-up (CUDA context, cuDNN plans)
            _sync(device)
            times[name] = _median_time(run, repeats if name == "accel" else 1)
            net = lambda: predict_patches(model, patches, cfg, torch.device(device))  # noqa: E731
            times[name + " net"] = _median_time(net, repeats if name == "accel" else 1)
        overlap = {n: 2 * (m & masks["accel"]).sum() / max(1, m.sum() + masks["accel"].sum()) for n, m in masks.items()}
        rows.append((f"{subject} {a}->{b}", len(patches), times, overlap, int(masks["accel"].sum()), int(masks["cpu-2"].sum())))
    print(f"\npair                candidates  step two (s): {accel} / cpu 2 threads / cpu all   network only (s)          "
          f"mask voxels {accel} / cpu, Dice {accel} vs cpu")
    for name, n, t, overlap, vg, vc in rows:
        print(f"{name:<20}{n:>10}  {t['accel']:>8.2f} / {t['cpu-2']:>6.2f} / {t['cpu-all']:>6.2f}"
              f"          {t['accel net']:.2f} / {t['cpu-2 net']:.2f} / {t['cpu-all net']:.2f}"
              f"          {vg} / {vc}, {overlap['cpu-2']:.4f}")


def _start_workers(address: str) -> list[subprocess.Popen]:
    """The two kinds of worker that docs/scaling.md starts: a CPU one and one with GPU=1."""
    procs = []
    for name, extra in (("cpu-worker", []), ("gpu-worker", ["--resources", "GPU=1"])):
        procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--name", name,
                                       "--nthreads", "1", "--nworkers", "1", "--preload", "pipelines.worker", *extra],
                                      cwd=ROOT, stderr=subprocess.DEVNULL))
    return procs


def dask_check(store: Path, accel: str) -> None:
    from distributed import Client, LocalCluster

    from msnl.config import StepOneConfig
    from pipelines.run import cnn_resources, cnn_task
    from storage.results import intervals, read_prediction_attrs

    todo = intervals(store)
    with LocalCluster(n_workers=0, dashboard_address=None) as cluster, Client(cluster) as client:
        procs = _start_workers(cluster.scheduler_address)
        try:
            client.wait_for_workers(2, timeout=120)
            resources = cnn_resources(client)
            print(f"dask: workers {sorted(w['name'] for w in client.scheduler_info()['workers'].values())}; CNN tasks ask for {resources}")
            futures = [client.submit(cnn_task, str(store), [t], None, StepOneConfig(), resources=resources, pure=False) for t in todo]
            for t, result in zip(todo, client.gather(futures)):
                attrs = read_prediction_attrs(str(store), *t)
                print(f"dask: {t[0]} {t[1]}->{t[2]}: {result[0][3]}, ran on {attrs['worker']} with {attrs['device']}, "
                      f"CNN {attrs['timings']['cnn']:.2f} s, {attrs['new_lesion_count']} new lesions")
                assert attrs["device"].startswith(accel) and attrs["worker"] == "gpu-worker", attrs
        finally:
            for p in procs:
                p.terminate()
    print(f"dask: every CNN task ran on the GPU worker, with {accel}")


def train_check(patches: Path, epochs: int, accel: str) -> None:
    import torch

    from msnl.inference import load_weights
    from msnl.training import train

    shipped = load_weights(None)[1]  # the shipped weights' recipe, for `epochs` epochs
    cfg = dataclasses.replace(shipped, epochs=epochs)
    data = _load_patches(patches, flair_input=cfg.flair_input)
    print(f"train: {len(data)} patches, {int(data.is_tp.sum())} TP; {_device_name(accel)}")
    ends: list[float] = []

    def mark(epoch: int, batch: int, batches: int, loss: float) -> None:
        if batch == batches - 1:
            _sync(accel)
            ends.append(time.perf_counter())

    start = time.perf_counter()
    _, history = train(data, cfg, seed=0, on_batch=mark, device=torch.device(accel))
    per_epoch = np.diff([start, *ends])
    print(f"train {accel}: {cfg.patches_per_epoch} patches per epoch, s per epoch {np.round(per_epoch, 1).tolist()}, loss {np.round(history, 3).tolist()}")
    torch.set_num_threads(2)
    cpu_cfg = dataclasses.replace(cfg, epochs=1, patches_per_epoch=1024)
    start = time.perf_counter()
    train(data, cpu_cfg, seed=0, device=torch.device("cpu"))
    cpu = (time.perf_counter() - start) * cfg.patches_per_epoch / cpu_cfg.patches_per_epoch
    steady = float(np.median(per_epoch[1:])) if len(per_epoch) > 1 else float(per_epoch[0])
    print(f"train cpu (2 threads, this machine): {cpu:.1f} s per {cfg.patches_per_epoch}-patch epoch (from 1,024 patches); "
          f"speed-up of {accel} {cpu / steady:.1f}x")


def fit(patches: Path, out: Path, config: str, exclude: list[str], seed: int, accel: str) -> None:
    """Train as `msnl train` does (every member of an ensemble), on the exported patches less
    any whose source names contain an `exclude` string, and write the weights file."""
    import json

    import torch

    from msnl.config import CNNConfig
    from msnl.training import save_weights, train_members

    # the patches' own FLAIR channels unless the config names others (then they are refused)
    cfg = CNNConfig.from_dict({**CNNConfig().to_dict(), "flair_input": _exported_flair_input(patches), **json.loads(config)})
    data = _load_patches(patches, exclude, cfg.flair_input)
    start = time.perf_counter()
    members, histories = train_members(data, cfg, seed, device=torch.device(accel))
    save_weights(out, members, cfg, seed, histories, torch.device(accel), data)
    print(f"fit {out.name}: {len(data)} patches ({int(data.is_tp.sum())} TP), {config}, "
          f"{(time.perf_counter() - start) / (cfg.epochs * cfg.ensemble_size):.1f} s per epoch, "
          f"loss {', '.join(f'{h[0]:.3f} -> {h[-1]:.3f}' for h in histories)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="part", required=True)
    ex = sub.add_parser("export")
    ex.add_argument("--data", type=Path, required=True)
    ex.add_argument("--out", type=Path, required=True)
    ex.add_argument("--pairs", type=int, default=6, help="simulated training pairs to sample patches from (0: all)")
    ex.add_argument("--with-real", action="store_true", help="add the real pairs' patches")
    ex.add_argument("--seed", type=int, default=0)
    ex.add_argument("--step-one", action="append", default=[], metavar="KEY=VALUE",
                    help="override a StepOneConfig field, as for `msnl train` (candidates made another way)")
    ex.add_argument("--flair-input", choices=("grey_levels", "intensities"), help="FLAIR channels of the patches (default: the shipped weights')")
    inf = sub.add_parser("inference")
    inf.add_argument("--store", type=Path, required=True)
    inf.add_argument("--repeats", type=int, default=5)
    dk = sub.add_parser("dask")
    dk.add_argument("--store", type=Path, required=True)
    tr = sub.add_parser("train")
    tr.add_argument("--patches", type=Path, required=True)
    tr.add_argument("--epochs", type=int, default=3)
    ft = sub.add_parser("fit")
    ft.add_argument("--patches", type=Path, required=True)
    ft.add_argument("--out", type=Path, required=True)
    ft.add_argument("--config", default="{}", help='CNNConfig overrides as a JSON object, e.g. {"lr_step_epochs": 8}')
    ft.add_argument("--exclude", action="append", default=[], help="leave out patches whose source contains this")
    ft.add_argument("--seed", type=int, default=0)
    for part in (inf, dk, tr, ft):
        part.add_argument("--device", default="cuda", help="the accelerator to check (cpu: a dry run of the script)")
    args = parser.parse_args()
    if args.part == "export":
        from msnl.config import ConfigError
        from pipelines.train import step_one_config

        try:
            step_one = step_one_config(args.step_one)
        except ConfigError as exc:
            parser.error(str(exc))
        export(args.data, args.out, args.pairs, args.seed, args.with_real, args.flair_input, step_one)
    elif args.part == "inference":
        inference(args.store, args.repeats, args.device)
    elif args.part == "dask":
        dask_check(args.store, args.device)
    elif args.part == "train":
        train_check(args.patches, args.epochs, args.device)
    else:
        fit(args.patches, args.out, args.config, args.exclude, args.seed, args.device)


if __name__ == "__main__":
    main()
