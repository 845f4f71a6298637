"""The language model: loading and one adapter per architecture, hooks, the suffix re-run from a cached prefix, hidden states, and the Jacobian engine."""
