"""Feature quality: reference profiles per data version, drift tests on served values,
online/offline consistency (docs/quality.md)."""
