"""modelfleet.rollout."""
