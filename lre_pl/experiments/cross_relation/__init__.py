"""``lre-pl cross-relation``: relation r's LRE applied to relation r′'s subject states, over a finished sweep."""
