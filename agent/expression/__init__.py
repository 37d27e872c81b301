"""What subscribers learn about each face: its emotion (the classifier), pooled blendshapes, head pose, the metadata message."""
