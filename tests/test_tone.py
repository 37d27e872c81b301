"""Skin tone of the synthetic face: with ``tone_match: skin`` it takes the tone and light of the skin it
replaces, whatever colour the generator drew, and keeps the generator's features. The real pipeline
draws the astronaut's face (public domain); her photo is recoloured to other skin tones and to grey.
Colour is judged in CIELAB by scikit-image, not by the OpenCV conversion the agent uses."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.color
import skimage.data
from configs import config

from agent.composition.compose import compose, face_region
from agent.pipeline import Anonymizer

TONES = {
    "as photographed": (1.0, 1.0, 1.0),
    "dark brown": (0.45, 0.30, 0.22),
    "olive": (0.80, 0.78, 0.55),
    "cool light": (0.90, 0.95, 1.10),
}


@pytest.fixture(scope="module")
def astronaut_jobs():
    a = Anonymizer(config())
    try:
        rgb = skimage.data.astronaut()
        result = a.process(rgb)
        assert result.jobs and all(j.generated is not None for j in result.jobs)
        return rgb, result.jobs
    finally:
        a.close()


def core(job, shape) -> tuple[slice, slice, np.ndarray]:
    region = face_region(job, shape, feather=0.06)
    h, w = region.alpha.shape
    return slice(region.y0, region.y0 + h), slice(region.x0, region.x0 + w), region.alpha >= 0.99


def median_lab(rgb: np.ndarray, job) -> np.ndarray:
    ys, xs, inside = core(job, rgb.shape)
    return np.median(skimage.color.rgb2lab(rgb[ys, xs])[inside], axis=0)


def recolour(rgb: np.ndarray, gains) -> np.ndarray:
    return (rgb.astype(np.float32) * np.float32(gains)).clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("tone", list(TONES))
def test_the_synthetic_face_takes_the_tone_of_the_skin_it_replaces(astronaut_jobs, tone):
    rgb, jobs = astronaut_jobs
    frame = recolour(rgb, TONES[tone])
    target = median_lab(frame, jobs[0])
    skin, *_ = compose(frame, jobs, tone_match="skin")
    brightness, *_ = compose(frame, jobs, tone_match="luminance")
    delta_skin = float(np.linalg.norm(median_lab(skin, jobs[0]) - target))
    delta_brightness = float(np.linalg.norm(median_lab(brightness, jobs[0]) - target))
    assert delta_skin < 4.0, (tone, delta_skin)  # CIE76 ~2.3 is a just-noticeable difference
    assert delta_skin < delta_brightness, (tone, delta_skin, delta_brightness)


def test_a_greyscale_photo_keeps_a_grey_face(astronaut_jobs):
    rgb, jobs = astronaut_jobs
    grey = np.repeat(skimage.color.rgb2gray(rgb)[..., None] * 255, 3, axis=2).round().astype(np.uint8)
    out, *_ = compose(grey, jobs, tone_match="skin")
    ys, xs, inside = core(jobs[0], grey.shape)
    chroma = np.hypot(*skimage.color.rgb2lab(out[ys, xs])[inside][:, 1:].T)
    assert np.median(chroma) < 3.0, np.median(chroma)


def test_the_features_stay_the_generators_not_the_persons(astronaut_jobs):
    rgb, jobs = astronaut_jobs
    frame = recolour(rgb, TONES["dark brown"])
    skin, *_ = compose(frame, jobs, tone_match="skin")
    drawn, *_ = compose(frame, jobs, tone_match="none")
    ys, xs, inside = core(jobs[0], frame.shape)

    def detail(img):  # lightness minus its own median: the pattern of the face, not its tone
        lightness = skimage.color.rgb2lab(img[ys, xs])[..., 0][inside]
        return lightness - np.median(lightness)

    with_generator = np.corrcoef(detail(skin), detail(drawn))[0, 1]
    with_person = np.corrcoef(detail(skin), detail(frame))[0, 1]
    assert with_generator > 0.95, with_generator
    assert with_person < with_generator - 0.2, (with_person, with_generator)


def test_a_16_bit_still_takes_the_skin_tone_as_an_8_bit_one(astronaut_jobs):
    rgb, jobs = astronaut_jobs
    frame = recolour(rgb, TONES["olive"])
    eight, *_ = compose(frame, jobs, tone_match="skin")
    sixteen, *_ = compose(frame.astype(np.uint16) * 257, jobs, tone_match="skin")
    assert sixteen.dtype == np.uint16
    delta = np.linalg.norm(median_lab((sixteen // 257).astype(np.uint8), jobs[0]) - median_lab(eight, jobs[0]))
    assert delta < 1.5, delta
