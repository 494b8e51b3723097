"""Frequently bought together: baskets, frequent itemsets, association rules, product lists."""
