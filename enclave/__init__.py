"""attestfl enclave package."""
