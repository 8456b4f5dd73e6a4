"""Both real Lesjak pairs through the user's commands: `msnl run` on the dataset folder as
it ships, `msnl export`, then `msnl evaluate` against the dataset's truth. Its figures must be
those of the benchmarks' own scoring (the truth brought onto visit 2's grid through study 2's
transform), computed here apart from the stored prediction. About 5 minutes on 2 cores."""

from __future__ import annotations

import json

import numpy as np
import pytest

from msnl.metrics import score_lesions
from msnl.scan import LabelMap
from pipelines.cli import main
from storage.results import open_interval
from storage.training_data import TrainingPair, read_truth

pytestmark = [pytest.mark.real_data, pytest.mark.slow]


@pytest.mark.timeout(1200)
def test_real_pairs_run_export_and_evaluate_as_the_benchmarks_score_them(longitudinal, tmp_path, capsys):
    store, out = tmp_path / "store.zarr", tmp_path / "out"
    assert main(["run", str(longitudinal), str(store), "--quiet"]) == 0
    assert main(["export", str(store), str(out)]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--json", str(out), str(longitudinal)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [(p["subject"], p["session"], p["resampled"]) for p in report["pairs"]] == [
        ("patient01", "2", "truth"), ("patient12", "2", "truth")]
    for pair in report["pairs"]:
        patient = longitudinal / pair["subject"]
        interval = open_interval(store, pair["subject"], "1", "2")
        predicted = LabelMap(interval.newlesions.values > 0, np.asarray(interval.attrs["affine"]))
        truth = read_truth(TrainingPair(str(store), pair["subject"], "1", "2", str(patient / "newlesions.nii.gz"),
                                        str(patient / "study2_FLAIR_to_common_space.txt")), predicted)
        expected = score_lesions(predicted, LabelMap(truth, predicted.affine))
        assert (pair["truth_lesions"], pair["detected"], pair["predicted_lesions"], pair["true_predicted"]) == (
            expected.truth_lesions, expected.detected, expected.predicted_lesions, expected.true_predicted)
        assert pair["dice"] == pytest.approx(expected.dice) and pair["truth_lesions"] > 0
