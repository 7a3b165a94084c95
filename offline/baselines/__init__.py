"""Reference baselines the generative models are compared with (SASRec, full-catalogue cross-entropy)."""
