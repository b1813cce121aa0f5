"""Data pipeline: WebDataset samples, conversion, packing, collation and bad-sample accounting."""
