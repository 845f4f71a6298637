"""The attribute lens: its operators from a fit or a sweep, and the paper's distracted-prompt experiment."""
