"""Building blocks shared by more than one model (attention, RoPE, norms, MLP, masks). No model logic."""
