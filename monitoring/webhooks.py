"""fal webhook deliveries: verify, record, apply (built by the webhooks issue)."""


def apply_unmatched_deliveries(sender=None, *, training_id: int, request_id: str, **kwargs) -> None:
    """Receiver of ``transitions.training_submitted``: apply a webhook that came too early."""
