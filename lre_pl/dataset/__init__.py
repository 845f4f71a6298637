"""The relation dataset and few-shot prompts: what a relation is, how prompts are built, when a token names an object. No model, no torch."""
