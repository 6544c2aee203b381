"""Training reward models: the objective, the optimiser, the pure step functions and the loop."""
