"""The core every stage stands on: typed configs from the profiles, repository paths, runs cached by a hash
of their config (with claims so two workers never compute one run), the worker pool, provenance and seeds.
Imports nothing else of the package."""
