"""The curated catalog of model pairs (catalog.yaml), installed as nudge_local.models."""
