"""The service's own database: tables, migrations, the clinic copy, runs and lists."""
