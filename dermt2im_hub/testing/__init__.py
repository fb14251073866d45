"""Offline stand-ins for tests, the demo and benchmarks: a tiny SD1.5-shaped base and phantom dermoscopy images."""
