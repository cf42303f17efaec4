"""Engines for the nightly run's features, scores and reasons: one process, or Dask.

The embedded default computes everything in the job's process. A network too large for
one machine sets ``[engine] kind = "dask"``: the open caseload is split into partitions
of whole caseloads (``partitions``), each computed on a Dask worker with the functions
the single process uses (``network``), and the job publishes them as one list.
Importing this package does not import Dask: only ``network`` does.
"""
