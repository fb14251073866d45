"""Stage 4: synthetic-data quality and privacy checks (artifact filter, memorization audit, fidelity, skin tone)."""
