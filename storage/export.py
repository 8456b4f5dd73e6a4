"""Export results for viewers and spreadsheets: NIfTI masks in each later visit's own scanner
space (with that FLAIR's qform and sform), and cohort-wide CSVs."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from storage.bids import atomic_write, save_image
from storage.results import open_lesions, open_results, read_prediction_mask
from storage.scans import stored_scan_attrs


def export(store: str | Path, out: str | Path) -> list[Path]:
    """Write every finished interval's mask and the two CSVs; returns the files written."""
    out = Path(out)
    results = open_results(store)
    written = []
    for subject in results.subject.values:
        for interval in results.interval.values:
            row = results.sel(subject=subject, interval=interval)
            if str(row.status.values) != "ok":
                continue
            a, b = str(row.from_visit.values), str(row.to_visit.values)
            attrs = stored_scan_attrs(store, str(subject), b)
            mask = read_prediction_mask(store, str(subject), a, b).astype(np.uint8)
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
    return written + [per_interval, lesion_csv]

