"""modelfleet.agent."""
