"""pipelines: the cohort graphs on Dask, cluster set-up, progress, and the `msnl` command line."""
