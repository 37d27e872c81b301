"""Frames in and out: cameras, files and streams (capture), stills on disk (images), video files (video),
MQTT (publish, with the broker credentials in broker_auth and the Home Assistant discovery documents in discovery)."""
