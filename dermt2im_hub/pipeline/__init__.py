"""End to end: `dermt2im run` over all stages, `dermt2im demo`, and the run report."""
