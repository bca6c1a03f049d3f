"""Stage 4, the studies: Study A and Study B (each a design, its cached runs and their analysis), Study B's
one-layer theory model, the replication designs, and the claims table with its verdict rules."""
