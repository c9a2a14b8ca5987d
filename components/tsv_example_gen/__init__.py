"""Custom ExampleGen for tab-separated click logs."""
