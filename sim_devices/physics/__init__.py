"""Physical models that drive the simulated HAL's sensors (deterministic, seeded; docs/simulator.md)."""
