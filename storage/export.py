"""Export results for viewers and spreadsheets: NIfTI masks in each later visit's own scanner
space (with that FLAIR's qform and sform), and cohort-wide CSVs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from storage.bids import atomic_write, save_image
from storage.layout import scan_key, store_path
from storage.results import open_lesions, open_results, read_prediction_mask
from storage.scans import stored_scan_attrs


@dataclass(frozen=True)
class ExportSummary:
    written: list[Path]  # the masks, then intervals.csv and lesions.csv
    skipped: list[str]  # one message per finished interval whose mask could not be written


def export(store: str | Path, out: str | Path) -> ExportSummary:
    """Write every finished interval's mask and the two CSVs. An interval whose mask can't be
    written (its scan missing from the store) is skipped with a message; the others go on."""
    out = Path(out)
    results = open_results(store)
    written, skipped = [], []
    rows = results.reset_coords()[["status", "from_visit", "to_visit"]].to_dataframe().reset_index()
    for row in rows[rows.status == "ok"].itertuples():
        subject, a, b = str(row.subject), str(row.from_visit), str(row.to_visit)
        attrs = stored_scan_attrs(store, subject, b)
        if attrs is None:
            skipped.append(f"sub-{subject} {a}->{b}: {store_path(store) / scan_key(subject, b)}: the scan of visit {b} is "
                           "not in the store, so its mask has no scanner space; ingest the visit again "
                           "(`msnl ingest SOURCE STORE`)")
            continue
        mask = read_prediction_mask(store, subject, a, b).astype(np.uint8)
        img = nib.Nifti1Image(mask, np.asarray(attrs["affine"]))
        img.set_qform(np.asarray(attrs["qform"]), code=int(attrs["qform_code"]))
        img.set_sform(np.asarray(attrs["sform"]), code=int(attrs["sform_code"]))
        path = out / f"sub-{subject}" / f"ses-{b}" / f"sub-{subject}_ses-{b}_desc-newlesions_mask.nii.gz"
        save_image(img, path)
        written.append(path)
    per_interval = out / "intervals.csv"
    atomic_write(per_interval, results.to_dataframe().reset_index().to_csv(index=False).encode())
    lesion_csv = out / "lesions.csv"
    atomic_write(lesion_csv, open_lesions(store).to_csv(index=False).encode())
    return ExportSummary(written + [per_interval, lesion_csv], skipped)
