"""The protocol's shared terms, in one place: the row schema and its files, the known-sample split, selection and its tie rule, and the sweep folder's layout. Pure Python: no model needed."""
