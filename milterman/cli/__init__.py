"""Command-line front ends: docopt usage texts and option handling; nothing imports this package."""
