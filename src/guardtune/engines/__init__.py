"""Engines that run guardtune's work on other runtimes (Ray Data); each is an optional extra."""
