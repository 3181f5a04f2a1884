"""modelfleet.delivery: how bytes travel from the hub to devices."""

from modelfleet.delivery.http_fetcher import HttpFetcher

__all__ = ["HttpFetcher"]
