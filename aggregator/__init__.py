"""attestfl aggregator package."""
