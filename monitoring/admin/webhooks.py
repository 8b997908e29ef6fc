"""Admin for fal webhook deliveries (built by the webhooks issue)."""
