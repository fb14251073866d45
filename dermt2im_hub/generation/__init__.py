"""Stage 3: synthetic image generation with A1111-named samplers and full per-image provenance."""
