"""Jobs around the domain library: ETL, training, scoring, the scheduler and the CLI."""
