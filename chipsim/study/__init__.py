"""Studies built on the simulator: validation against measurements, regression baselines."""
