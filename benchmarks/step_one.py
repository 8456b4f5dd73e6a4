"""Step one on the real Lesjak pairs: time per stage, who spends it, peak memory, and quality.

    .venv/bin/python benchmarks/step_one.py

Each patient runs in a fresh child process, which reports its own peak RSS. Needs
../shared/data/lesjak-longitudinal.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "lesjak-longitudinal"


def _child(patient: str) -> None:
    sys.path.insert(0, str(ROOT))
    from msnl.lesjak_eval import score_step_one
    from msnl.step_one import StageTimer, run_step_one
    from storage.lesjak import read_lesjak_pair

    pair = read_lesjak_pair(REAL / patient)
    timer = StageTimer()
    start = time.perf_counter()
    result = run_step_one(pair.flair1, pair.flair2, timer=timer)
    wall = time.perf_counter() - start
    score = score_step_one(result, pair.newlesions, pair.brainmask, pair.transform2)
    print(json.dumps({
        "patient": patient, "wall_s": wall, "stages": timer.seconds,
        "share": {o: timer.share(o) for o in ("ants", "mask_model", "ours")},
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "n_candidates": score.n_candidates, "covered": score.coverage.covered,
        "truth_lesions": score.coverage.total, "brain_dice": score.brain_dice,
        "registration_correlation": result.qc["registration_correlation"],
    }))


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        _child(sys.argv[2])
        return
    if not REAL.exists():
        raise SystemExit(f"needs the real pairs at {REAL}")
    rows = []
    for patient in sorted(p.name for p in REAL.iterdir() if p.is_dir()):
        out = subprocess.run([sys.executable, __file__, "--child", patient], check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    stages = list(rows[0]["stages"])
    print("patient    wall s  " + "  ".join(f"{s:>15}" for s in stages))
    for r in rows:
        print(f"{r['patient']:<10} {r['wall_s']:6.1f}  " + "  ".join(f"{r['stages'][s]:15.2f}" for s in stages))
    print()
    print("patient    ANTs   mask model  ours    peak MiB  candidates  covered/truth  brain Dice  reg. corr.")
    for r in rows:
        s = r["share"]
        print(f"{r['patient']:<10} {s['ants']:5.1%}  {s['mask_model']:9.1%}  {s['ours']:5.1%}  {r['peak_mib']:8.0f}"
              f"  {r['n_candidates']:10d}  {r['covered']:>5d}/{r['truth_lesions']:<5d}   {r['brain_dice']:10.3f}"
              f"  {r['registration_correlation']:9.3f}")


if __name__ == "__main__":
    main()
