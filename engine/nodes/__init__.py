"""The node registry: the live nodes, where they are reached, their load, the rooms whose publishers they hold."""
