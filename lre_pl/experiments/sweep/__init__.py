"""``lre-pl sweep``: the paper's protocol over many relations and trials, resumable, and its report."""
