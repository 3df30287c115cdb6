"""Preprocessing template, instantiated per dataset."""
