"""Tests of retention.pipelines: the jobs, the CLI, the scheduler and real processes."""
