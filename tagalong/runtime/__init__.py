"""Shared service runtime: settings, server bootstrap, health, metrics, logging, auth, channels."""
