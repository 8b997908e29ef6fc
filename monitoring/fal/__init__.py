"""Everything fal. Nothing outside this package knows fal's wire format: the rest of the
monitor sees classified errors, status reports and validated URLs (docs/fal.md)."""
