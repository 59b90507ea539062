"""Pages, by the same split as the services and selectors."""
