"""Stage 1, data: benchmark and custom interaction tables (`datasets`), leave-one-out splits (`splits`) and the
ranking metrics every stage reports (`evaluation`)."""
