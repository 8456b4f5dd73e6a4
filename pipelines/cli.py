"""The `msnl` command line: a thin layer over the public Python API."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Sequence

from msnl import __version__
from msnl.config import INFERENCE_FIELDS
from msnl.errors import MsnlError

log = logging.getLogger("msnl")

_STEP_ONE_HELP = ("override a StepOneConfig field (msnl/config.py; the paper's values by default), e.g. --step-one "
                  "opening_radius_mm=1.0. Weights record the candidate settings they were trained on, and `msnl run` "
                  "refuses others before any work.")


def _print_entries(entries: list[dict]) -> None:
    for e in entries:
        if e["status"] in ("failed", "warning", "changed") or e.get("message"):
            print(f"  [{e['status']}] {e['message']}", file=sys.stderr)


def _print_failures(failed: list[tuple[str, str, str, str]]) -> None:
    for subject, interval, status, message in failed:
        print(f"  [failed] sub-{subject} {interval}: {status}: {message}", file=sys.stderr)


def _cmd_ingest(args: argparse.Namespace) -> int:
    from pipelines.ingest import run_ingest

    summary = run_ingest(args.source, args.store, workers=args.workers, progress=not args.quiet)
    _print_entries(summary.entries)
    counts = ", ".join(
        f"{summary.count(s)} {s}" for s in ("ingested", "changed", "unchanged", "failed", "warning") if summary.count(s)
    )
    print(f"ingest: {counts}. Report stored as {args.store}/{summary.report_key}.")
    return 1 if summary.failed else 0


def _msnl_command() -> str:
    """How to call msnl again from the user's shell: `msnl`, unless this run was started by a
    path to the console script that PATH does not lead to (`.venv/bin/msnl demo`, as the
    README's first command does), which is then given as typed."""
    started_as = sys.argv[0]
    if Path(started_as).name != "msnl":
        return "msnl"
    on_path = shutil.which("msnl")
    if on_path is not None and Path(on_path).resolve() == Path(started_as).resolve():
        return "msnl"
    return shlex.quote(started_as)


def _cmd_demo(args: argparse.Namespace) -> int:
    import time

    from pipelines.demo import DEMO_SUBJECTS, DEMO_VISITS, endpoint_report, run_demo
    from storage.results import open_results

    root = Path(args.dir)
    started = time.perf_counter()
    print(f"demo: a simulated two-arm trial ({DEMO_SUBJECTS} subjects x {DEMO_VISITS} visits, from the MNI152 "
          f"template bundled with nilearn) under {root}")
    store, summary = run_demo(root, workers=args.workers)
    _print_failures(summary.failed)
    print(f"demo: {summary.intervals} intervals: {summary.done} processed, {summary.skipped} already done, "
          f"{len(summary.failed)} failed, in {time.perf_counter() - started:.0f} s\n")
    print(endpoint_report(store))
    _print_acquisition_changes("demo", open_results(store))
    print(f"\nIn Python: storage.open_results({str(store)!r})")
    print(f"Open the dashboard with:\n\n    {_msnl_command()} dashboard {shlex.quote(str(store))}\n")
    return 1 if summary.failed else 0


def _cmd_dashboard(args: argparse.Namespace) -> int:
    from importlib.util import find_spec

    store = Path(args.store)
    if not (store / "zarr.json").exists():
        raise MsnlError(f"{store}: no msnl store here. Make one with `msnl run SOURCE {store}` or `msnl demo`.")
    spec = find_spec("dashboard.app")
    if spec is None or spec.origin is None:
        raise MsnlError("the dashboard app is not installed with this msnl; reinstall with `pip install -e .`")
    command = [sys.executable, "-m", "streamlit", "run", spec.origin, "--server.address", args.host,
               "--server.port", str(args.port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
               "--client.toolbarMode", "minimal"]
    print(f"dashboard: http://{args.host}:{args.port}  (store {store}, read-only; Ctrl+C stops it)", flush=True)
    # Become the server, so stopping this process (Ctrl+C, a signal, a test) stops the server too.
    os.execve(sys.executable, command, {**os.environ, "MSNL_STORE": str(store.resolve())})


def _cmd_simulate(args: argparse.Namespace) -> int:
    from msnl.simulate import SimOptions
    from pipelines.simulate import parse_arms, run_simulate

    opts = SimOptions(arms=parse_arms(args.arms), lesion_free_share=args.lesion_free_share, sites=args.sites,
                      interval_days=args.interval_days, protocol=args.protocol)
    out = run_simulate(args.out, args.subjects, args.visits, args.seed, opts, args.real_lesions,
                       workers=args.workers, progress=not args.quiet)
    print(f"simulate: {args.subjects} subjects x {args.visits} visits written to {out} (truth under "
          f"{out / 'derivatives' / 'msnl-simulate'}). Ingest with: msnl ingest {out} STORE")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from pipelines.train import check_trainable, cnn_config, collect, prepare_pairs, step_one_config, train_and_save

    base = None
    step_one = step_one_config(args.step_one)
    if args.init:  # fine-tuning keeps the weights' own config (FLAIR input, members, widths)
        from msnl.inference import check_candidates, load_weights

        _, base, meta = load_weights(args.init)
        check_candidates(meta, step_one.candidate_settings(), args.init)  # before step one runs on every pair
    cfg = cnn_config(args.option, args.epochs, base)
    pairs = prepare_pairs([Path(s) for s in args.sources], Path(args.work), step_one, workers=args.workers,
                          exclude=set(args.exclude))
    data = collect(pairs, flair_input=cfg.flair_input, context_voxels=cfg.context_voxels)
    check_trainable(data, [Path(s) for s in args.sources])
    histories = train_and_save(data, Path(args.out), cfg, args.seed, Path(args.init) if args.init else None)
    losses = ", ".join(f"{h[0]:.4f} -> {h[-1]:.4f}" for h in histories)
    print(f"train: weights written to {args.out} (loss {losses}); "
          f"loss curve {Path(args.out).with_suffix('.loss.png')}")
    return 0


def _cmd_combine(args: argparse.Namespace) -> int:
    from msnl.inference import load_weights
    from msnl.training import combine_weights
    from pipelines.train import inference_options, loss_curve

    inference = inference_options(args.option)
    out = Path(args.out)
    cfg = combine_weights([Path(w) for w in args.weights], out, inference)
    meta = load_weights(out)[2]
    loss_curve(meta["histories"], meta["seed"], out.with_suffix(".loss.png"))
    settings = "".join(f", {key}={getattr(cfg, key)}" for key in inference)
    print(f"combine-weights: {cfg.ensemble_size} member{'s' if cfg.ensemble_size != 1 else ''} written to {out}{settings}; loss curve {out.with_suffix('.loss.png')}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from pipelines.run import run_cohort
    from pipelines.train import step_one_config
    from storage.report import failure_log
    from storage.results import open_results

    summary = run_cohort(args.source, args.store, scheduler=args.scheduler, workers=args.workers,
                         weights=args.weights, cfg=step_one_config(args.step_one), progress=not args.quiet)
    _print_failures(summary.failed)
    print(f"run: {summary.intervals} intervals: {summary.done} processed, {summary.skipped} already done, "
          f"{len(summary.failed)} failed. Results: storage.open_results({str(args.store)!r})")
    log = failure_log(args.store, summary.report) if summary.report else None
    if log is not None:
        print(f"run: where each task failure was raised: {_msnl_command()} status {shlex.quote(str(args.store))} --tracebacks "
              f"(kept in {log})")
    if summary.intervals:
        results = open_results(args.store)
        if not args.quiet:
            print(_results_table(results).to_string())
        _print_acquisition_changes("run", results)
    return 1 if summary.failed else 0


def _results_table(results):
    """The run's endpoints per interval, with the trial facts (dates, arm, site) the source
    gave: a column no interval has a value in is left out, as for patient folders."""
    table = results[["new_lesion_count", "new_lesion_volume_mm3", "status"]].to_dataframe()
    given = [name for name, column in table.items() if (column.notna() & (column.astype(str) != "")).any()]
    return table[given]


def _print_acquisition_changes(command: str, results) -> None:
    from msnl.qc import REVIEW_RESOLUTION_RATIO, coarser_visit_one

    flagged = coarser_visit_one(results)
    if flagged.empty:
        return
    print(f"{command}: {len(flagged)} processed interval(s) to review: visit 1 is sampled at least {REVIEW_RESOLUTION_RATIO} "
          "times coarser than visit 2, where the CNN is known to find false new lesions "
          "(docs/model_card.md in msnl's source):", file=sys.stderr)
    for row in flagged.itertuples():
        print(f"  sub-{row.subject} {row.interval}: {row.from_acquisition} -> {row.to_acquisition} "
              f"({row.resolution_ratio:.1f} times coarser), {row.new_lesion_count} new lesion(s)", file=sys.stderr)


def _cmd_export(args: argparse.Namespace) -> int:
    from storage.export import export

    summary = export(args.store, args.out)
    for message in summary.skipped:
        print(f"  [skipped] {message}", file=sys.stderr)
    print(f"export: {len(summary.written) - 2} masks, intervals.csv and lesions.csv written under {args.out}"
          + (f"; {len(summary.skipped)} interval(s) skipped (above)" if summary.skipped else ""))
    return 1 if summary.skipped else 0


def _cmd_status(args: argparse.Namespace) -> int:
    from pipelines.status import status_report, tracebacks_report

    if args.subject is not None and not args.tracebacks:
        raise MsnlError("--subject narrows --tracebacks; add --tracebacks")
    print(tracebacks_report(args.store, args.subject) if args.tracebacks else status_report(args.store))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from pipelines.evaluate import evaluate, format_report, to_json

    report = evaluate(args.pred, args.truth, args.desc)
    print(to_json(report) if args.json else format_report(report))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="msnl",
        description="Find new multiple-sclerosis lesions between two FLAIR MRIs of the same patient, "
        "across whole trial cohorts.",
    )
    parser.add_argument("--version", action="version", version=f"msnl {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "ingest",
        help="put a cohort's FLAIR scans into a chunked Zarr store",
        description="Check every FLAIR of SOURCE and write it into STORE (Zarr v3, OME-NGFF 0.5), in "
        "parallel. Scans already stored with the same SHA-256 are skipped. Bad scans are reported "
        "and stored in the ingest report; the others are still ingested. Exit code 1 if any failed.",
    )
    p.add_argument("source", help="a BIDS folder (sub-*/ses-*/anat/*_FLAIR.nii[.gz]), a CSV manifest "
                   "with columns subject, visit, path [, acquired_on, arm, site], or a folder of patient "
                   "folders in the Lesjak (study1_FLAIR.nii.gz, study2_FLAIR.nii.gz) or MSSEG-2 "
                   "(flair_time01_on_middle_space.nii.gz, ...) form")
    p.add_argument("store", help="the Zarr store to create or update (a folder)")
    p.add_argument("--workers", type=int, default=None, help="parallel threads (default: one per CPU this job may use)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_ingest)

    p = sub.add_parser(
        "simulate",
        help="write a simulated longitudinal MS cohort with exact new-lesion truth (BIDS)",
        description="Simulate a trial cohort as BIDS: FLAIRs with realistic acquisition nuisances, "
        "participants.tsv (arm, site), sessions.tsv (acq_time), and under derivatives/msnl-simulate "
        "the new-lesion mask of each later visit, the lesion mask of every visit and the drawn "
        "parameters. The same seed gives bit-identical files; subject k is the same whatever N is.",
    )
    p.add_argument("out", help="the BIDS folder to write")
    p.add_argument("--subjects", type=int, default=6, help="number of subjects (default 6)")
    p.add_argument("--visits", type=int, default=2, help="visits per subject, at least 2 (default 2)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--arms", default="placebo:3,active:0.8",
                   help="arms and their mean new lesions per interval, drawn negative-binomially "
                   "(default placebo:3,active:0.8); subjects are assigned to arms in turn")
    p.add_argument("--lesion-free-share", type=float, default=0.2,
                   help="share of subjects with no new lesion at all (default 0.2); subject 1 is always lesion-free and "
                   "subject 2 never (it has one or two new lesions per interval)")
    p.add_argument("--sites", type=int, default=3, help="number of sites (default 3)")
    p.add_argument("--interval-days", type=int, default=365, help="mean days between visits (default 365)")
    p.add_argument("--protocol", choices=["mixed", "2d"], default="mixed",
                   help="mixed: 2D thick-slice and 3D 1 mm visits (default); 2d: every visit 1 x 1 x 3 mm 2D")
    p.add_argument("--real-lesions", default=None, metavar="DIR",
                   help="a folder of real patients (sub-folders with FLAIR.nii.gz and lesions.nii.gz in MNI "
                   "space, like ../shared/data/lesjak-cross-sectional-mni) whose lesions become new lesions")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: one per CPU this job may use)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser(
        "train",
        help="train the patch CNN (or fine-tune it with --init) on labelled pairs",
        description="Run step one on every pair of the SOURCES (simulated BIDS cohorts with truth under "
        "derivatives/msnl-simulate, or real pairs in Lesjak or MSSEG-2 patient folders), then train the patch CNN with the "
        "paper's sampling and schedule. Writes the weights, with the seed and the data in their metadata, "
        "and a loss curve beside them. Step-one results are kept in --work, so a re-run starts training at once.",
    )
    p.add_argument("sources", nargs="+", help="training sources (folders)")
    p.add_argument("--out", required=True, help="where to write the weights (.pt)")
    p.add_argument("--work", default="msnl-train-work", help="folder for step-one results (default ./msnl-train-work)")
    p.add_argument("--init", default=None, metavar="WEIGHTS", help="start from these weights (fine-tuning), with their config (FLAIR input, members, "
                   "widths); --option still changes a field")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--epochs", type=int, default=None, help="override the paper's 20 epochs")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="override a CNNConfig field (msnl/config.py), e.g. --option size_bucket_window=8")
    p.add_argument("--step-one", action="append", default=[], metavar="KEY=VALUE", help=_STEP_ONE_HELP)
    p.add_argument("--exclude", nargs="*", default=[], metavar="SUBJECT", help="leave these subjects out (e.g. patient01)")
    p.add_argument("--workers", type=int, default=None, help="step-one worker processes (default: one per CPU this job may use)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "combine-weights",
        help="join weights trained apart (one seed each) into one ensemble file, or set inference fields",
        description="Join weights files of one ensemble trained on separate machines: same options and pairs, "
        "consecutive seeds (msnl train --seed 0, --seed 1, ...). The result is the file that "
        "`msnl train --seed 0 --option ensemble_size=N` writes in one run; inference averages the members' "
        "probabilities before the threshold. --option sets fields that only inference reads, so one file "
        "alone can be rewritten with another threshold or with test-time flips.",
    )
    p.add_argument("weights", nargs="+", help="weights files (.pt), in any order")
    p.add_argument("--out", required=True, help="where to write the ensemble (.pt)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help=f"set an inference field in the written file, e.g. --option 'test_time_flip_axes=[0,1]'; "
                   f"one weights file alone is then rewritten with it ({', '.join(INFERENCE_FIELDS)})")
    p.set_defaults(func=_cmd_combine)

    p = sub.add_parser(
        "evaluate",
        help="score predicted new-lesion masks against truth (MSSEG-2 metrics)",
        description="Voxel Dice, and lesion-wise sensitivity, PPV and F1: a truth lesion is detected when at "
        "least 10% of its voxels are predicted, a predicted lesion is true when at least 10% of its voxels "
        "are in the truth; lesions under 3 mm³ are not scored; 26-connectivity. On lesion-free pairs, the "
        "number and volume of false-positive lesions. A prediction on another grid is resampled onto the "
        "truth's through world coordinates (nearest neighbour). TRUTH may also be a public dataset's folder of "
        "patient folders, one patient folder or its truth file: Lesjak (newlesions.nii.gz) or MSSEG-2 "
        "(ground_truth.nii.gz), matched to the sub-<patient>_ses-<visit 2> masks `msnl export` writes. Lesjak "
        "truth lies on a common grid a few mm from visit 2's, and is brought onto the prediction's grid through "
        "the patient's study2_FLAIR_to_common_space.txt.",
    )
    p.add_argument("pred", help="a NIfTI mask, or a folder of BIDS-named masks (sub-<id>_ses-<id>_...)")
    p.add_argument("truth", help="the same, for the truth, matched by subject and session; or a Lesjak or MSSEG-2 folder")
    p.add_argument("--desc", metavar="LABEL", default=None,
                   help="in folders, use only masks named with desc-LABEL, e.g. --desc newlesions for a simulated "
                   "cohort's derivatives/msnl-simulate, which also holds each visit's desc-lesions mask")
    p.add_argument("--json", action="store_true", help="print JSON for machines")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser(
        "run",
        help="run the whole method on a cohort, on a Dask cluster",
        description="Ingest SOURCE into STORE (incrementally), form each subject's consecutive visit pairs, "
        "run step one per interval and the CNN on batches of intervals, and store counts, volumes and "
        "lesion tables. Results are keyed by the scans, the config and the weights: a re-run skips what is "
        "done. Runs on a local cluster sized to the machine, or on --scheduler. Exit code 1 if any failed.",
    )
    p.add_argument("source", help="a BIDS folder, a CSV manifest or a folder of patient folders, as for `msnl ingest`")
    p.add_argument("store", help="the Zarr store")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS", help="use this Dask scheduler (tcp://host:8786)")
    p.add_argument("--workers", type=int, default=None, help="local worker processes (default: one per CPU this job may use)")
    p.add_argument("--weights", default=None, help="CNN weights (default: the shipped ones)")
    p.add_argument("--step-one", action="append", default=[], metavar="KEY=VALUE", help=_STEP_ONE_HELP)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser(
        "export",
        help="write new-lesion masks as NIfTI (native space) and cohort CSVs",
        description="For each processed interval, write the new-lesion mask in the later visit's own scanner "
        "space with that FLAIR's header (qform and sform with their codes), BIDS-derivative named "
        "sub-<id>/ses-<visit>/sub-<id>_ses-<visit>_desc-newlesions_mask.nii.gz, so it overlays in ITK-SNAP "
        "or FSLeyes; plus intervals.csv (per-interval figures) and lesions.csv (every lesion). An interval "
        "whose scan is missing from the store is skipped with a message (exit code 1); the others are written.",
    )
    p.add_argument("store", help="the Zarr store")
    p.add_argument("out", help="the folder to write")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser(
        "status",
        help="say where a store stands: intervals processed, pending and failed, and the latest runs",
        description="Print, for a terminal without a browser: subjects and intervals processed, pending and "
        "failed, each failure with its message, the intervals flagged for review, and the latest `msnl run` "
        "calls (finished, or still running or stopped). It only reads the store.",
    )
    p.add_argument("store", help="the Zarr store written by `msnl run`")
    p.add_argument("--tracebacks", action="store_true",
                   help="print, instead, where each task failure was raised (the traceback its run recorded)")
    p.add_argument("--subject", help="with --tracebacks: only this subject's failures")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser(
        "demo",
        help="run the main job on the embedded demo cohort",
        description="Simulate a small two-arm trial (6 subjects x 3 visits) from the MNI152 template "
        "bundled with nilearn (no download), run the whole method on it into DIR/store.zarr, print the "
        "per-arm endpoints and the command that opens the dashboard. A second run reuses what is there.",
    )
    p.add_argument("dir", nargs="?", default="msnl-demo", help="working folder (default: ./msnl-demo)")
    p.add_argument("--workers", type=int, default=None, help="local worker processes (default: one per CPU this job may use)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "dashboard",
        help="open the Streamlit dashboard on a store (read-only)",
        description="Serve the dashboard (cohort overview, endpoints, patient view) for STORE with "
        "`streamlit run dashboard/app.py`. It only reads the store, refreshes while `msnl run` writes, "
        "and binds to localhost unless --host says otherwise.",
    )
    p.add_argument("store", help="the Zarr store written by `msnl run`")
    p.add_argument("--host", default="localhost", help="address to bind (default localhost)")
    p.add_argument("--port", type=int, default=8501, help="port (default 8501)")
    p.set_defaults(func=_cmd_dashboard)
    return parser


# File-system errors that the user fixes, not msnl: one line naming the file and the fix
# instead of a traceback. Any other OSError is a bug and keeps its traceback.
_RESUME = "finished work is kept: run the same command again to resume"
_FIXABLE_OS_ERRORS = {
    errno.ENOSPC: f"the disk is full: free some space, or give a store on a larger disk; {_RESUME}",
    errno.EDQUOT: f"your disk quota is used up: free some space, or give a store where your quota allows; {_RESUME}",
    errno.EROFS: "the file system is read-only: give a store on a disk you can write",
    errno.EACCES: "permission denied: check that you may read the source and write the store (and its folder)",
    errno.EPERM: "operation not permitted: check that you may read the source and write the store (and its folder)",
}


def _os_error_line(exc: OSError) -> str | None:
    """One line for a file-system error the user can fix, or None for any other."""
    fix = _FIXABLE_OS_ERRORS.get(exc.errno)
    if fix is None:
        return None
    where = exc.filename if exc.filename is not None else "a file"
    return f"{where}: {fix}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `msnl` command; returns the exit code."""
    args = build_parser().parse_args(argv)
    level = logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # Dask logs every worker start and stop at INFO; its config is read when distributed is
    # first imported, inside the commands.
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", logging.getLevelName(level).lower())
    try:
        return int(args.func(args))
    except MsnlError as exc:
        print(f"msnl {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"msnl {args.command}: interrupted; finished work is kept, run the same command again to resume.", file=sys.stderr)
        return 130
    except OSError as exc:
        line = _os_error_line(exc)
        if line is None:
            raise
        print(f"msnl {args.command}: error: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
