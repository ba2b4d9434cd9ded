"""Partner formats (Segment, Shopify) mapped onto stepmail's events."""
