"""Model providers: one interface (chat request in, deltas out), one module per backend."""
