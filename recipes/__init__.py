"""Scripts that build things pali ships (not installed with the package)."""
