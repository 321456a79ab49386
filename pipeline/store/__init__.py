"""Content hashing, chained fingerprints, the content-addressed part store and the version plan."""
