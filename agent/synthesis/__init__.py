"""A synthetic face for each meshed face: alignment, the landmark conditioning image, the generator, its emotion routing and shading."""
