"""The frame that may leave: synthetic faces pasted back, every other face found covered, sealed by the guard."""
