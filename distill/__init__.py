"""How to fit: teacher recording, losses and optimisers for the solver family in
``learned_samplers`` (LD3 grids, D-ODE step scales, S4S coefficients)."""
