"""The embedded synthetic face generator: `generator` (what one sample is), `reference` (the source photos
and their meshes), `shape` (identity morphs), `expressions` (AU recipes, valence/arousal), `render` (drawing)
and `criteria` (the measured detection, landmark and nearest-centroid criteria)."""
