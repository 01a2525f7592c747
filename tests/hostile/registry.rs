//! Hostile registries: credentials per origin, bounded answers, uploads that must progress.
