"""``lre-pl beta-study``: why the LRE needs β > 1, as evaluation variants on a sweep's bundles, and its report."""
