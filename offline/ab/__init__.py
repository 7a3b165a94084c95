"""A/B analysis: exposure events + outcome events -> per-variant lift with confidence intervals (`scoter ab analyze`)."""
