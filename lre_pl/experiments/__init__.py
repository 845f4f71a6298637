"""Experiments built on the layers below, one folder each: ``sweep`` (the paper's protocol) and ``beta_study``."""
