"""Frames in and out: cameras, files and streams (capture), stills on disk (images), MQTT (publish)."""
