"""Recommender models (pure PyTorch) sharing one interface: calculate_loss / predict / full_sort_predict."""
