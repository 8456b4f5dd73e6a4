"""storage: the only code that knows the on-disk layout of msnl stores and cohort sources."""

from storage.cohort import open_cohort, write_cohort_table
from storage.manifest import ScanRecord, SourceProblem, read_source
from storage.report import read_ingest_reports, run_history, write_ingest_report
from storage.results import open_interval, open_lesions, open_results, results_stamp
from storage.scans import IngestOutcome, ingest_scan, lazy_scan, read_scan

__all__ = [
    "IngestOutcome",
    "ScanRecord",
    "SourceProblem",
    "ingest_scan",
    "lazy_scan",
    "open_cohort",
    "open_interval",
    "open_lesions",
    "open_results",
    "read_ingest_reports",
    "read_scan",
    "read_source",
    "run_history",
    "results_stamp",
    "write_cohort_table",
    "write_ingest_report",
]
