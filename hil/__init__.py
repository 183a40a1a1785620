"""hil package."""
