"""Personalisation (the seed's "Model 3"): user x item matrix, user-based collaborative
filtering, embedding profiles, a two-tower model, baselines, a blend, and the routing that
picks a list for existing users, new users with events and new users with nothing."""
