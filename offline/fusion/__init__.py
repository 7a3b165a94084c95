"""Stage 5, SCoTER fusion: the reasoning-fusion module (`model`), its training on a backbone (`train`), and the
backbone-vs-SCoTER and ablation experiments (`experiments`)."""
