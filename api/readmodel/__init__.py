"""The read model: SQL tables projected from `loraplane.events`, disposable and rebuildable by replay."""
