"""Leaderboards: per-cell summaries, significance tests and aggregate rankings of KD methods."""
