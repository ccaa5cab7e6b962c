"""Independent test peers, written from the published contracts (docs/) only."""
