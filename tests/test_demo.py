"""`msnl demo` end to end (slow: 7–14 minutes on 2 cores), then the dashboard on its store."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from pipelines.cli import main
from storage import open_results

pytestmark = pytest.mark.slow

APP = Path(__file__).resolve().parents[1] / "dashboard" / "app.py"


@pytest.mark.timeout(1800)  # the demo alone takes 7–14 minutes on 2 cores
def test_demo_runs_prints_endpoints_and_the_dashboard_command_then_reruns_as_a_no_op(tmp_path, capsys, monkeypatch):
    root = tmp_path / "demo"
    assert main(["demo", str(root)]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "12 intervals: 12 processed, 0 already done, 0 failed" in out
    # four intervals go from 3 mm slices in one plane to 3 mm slices in another (1 mm in plane)
    assert "demo: 4 processed interval(s) to review" in captured.err
    flagged = re.findall(r"^  sub-(\d+) (\S+): (.+) -> (.+) \(3\.0 times coarser\)", captured.err, re.M)
    assert [f[:2] for f in flagged] == [("001", "01->02"), ("003", "01->02"), ("004", "02->03"), ("005", "01->02")]
    assert ("sagittal 3.0 mm slices", "axial 3.0 mm slices") == flagged[0][2:]
    assert re.search(r"^placebo\s+01->02\s+3\s+0", out, re.M) and re.search(r"^active\s+02->03\s+3\s+0", out, re.M)
    assert "rate ratio active vs placebo" in out
    command = re.search(r"^\s+(msnl dashboard \S+)$", out, re.M).group(1)
    assert command == f"msnl dashboard {root / 'store.zarr'}"
    results = open_results(root / "store.zarr")
    assert results.sizes == {"subject": 6, "interval": 2} and (results.status == "ok").all()
    assert set(results.arm.values) == {"placebo", "active"} and (results.interval_days > 300).all()

    assert main(["demo", str(root)]) == 0  # a no-op: nothing is recomputed
    assert "12 intervals: 0 processed, 12 already done" in capsys.readouterr().out

    monkeypatch.setenv("MSNL_STORE", str(root / "store.zarr"))
    for page in ("overview", "endpoints", "patient"):
        at = AppTest.from_file(str(APP), default_timeout=120)
        at.query_params["page"] = page
        at.run()
        assert not at.exception and not at.error, page
        assert len(at.get("image")) >= (2 if page != "overview" else 0)
