"""The generated visual world: shape scenes and high-resolution documents with exact ground truth."""
