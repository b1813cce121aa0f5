"""Benchmarks: CASA and token insertion side by side in one process (`casa-adapter bench ...`)."""
