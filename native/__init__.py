"""attestfl native package."""
