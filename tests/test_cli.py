"""The command line explains itself, and the demo runs twice (the second time as a no-op)."""

from __future__ import annotations

import pytest

from msnl import __version__
from pipelines.cli import build_parser, main


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"msnl {__version__}"


def test_every_subcommand_explains_itself(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # argparse keeps them here
    assert {"ingest", "demo"} <= set(commands)
    for name in commands:
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: msnl {name}") and len(out.splitlines()) > 4


def test_demo_runs_then_reruns_as_a_no_op(tmp_path, capsys):
    assert main(["demo", str(tmp_path / "demo")]) == 0
    first = capsys.readouterr().out
    assert "4 scans ingested" in first and "placebo" in first and "acquired_on" in first
    assert main(["demo", str(tmp_path / "demo")]) == 0
    assert "0 scans ingested, 4 unchanged" in capsys.readouterr().out
