"""The built-in digits model: shipped metrics, both input paths, output shape and errors."""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import accuracy_score, f1_score

from models.builtin.digits import WEIGHTS, DigitsModel, pixels_from_image
from tests.support import digit_image, digit_png_base64, png_base64, test_split

METRICS = json.loads((WEIGHTS.parent / "metrics.json").read_text())
# Measured with the shipped weights: 0.992 (64x64) and 0.983 (200x150), the same for
# both polarities; the bar leaves room for other Pillow versions, not for regressions.
IMAGE_ACCURACY = 0.97
# The first held-out sample of each class (0..9), right through every image variant.
FIRST_OF_CLASS = [24, 16, 6, 2, 13, 14, 1, 0, 7, 8]


@pytest.fixture(scope="module")
def model() -> DigitsModel:
    model = DigitsModel()
    model.setup("cpu")
    return model


def labels(outputs: list[dict]) -> np.ndarray:
    return np.array([output["label"] for output in outputs])


def test_shipped_metrics_are_reproduced_through_predict(model):
    X_test, y_test = test_split()
    assert METRICS["test_accuracy"] >= 0.95
    assert METRICS["n_test"] == len(y_test)

    predicted = labels(model.predict([{"pixels": row.tolist()} for row in X_test]))

    assert accuracy_score(y_test, predicted) == pytest.approx(METRICS["test_accuracy"], abs=1e-9)
    assert f1_score(y_test, predicted, average="macro") == pytest.approx(METRICS["test_macro_f1"], abs=1e-9)


@pytest.mark.parametrize("size", [(64, 64), (200, 150)], ids=["64x64", "200x150"])
@pytest.mark.parametrize("invert", [False, True], ids=["dark-on-light", "light-on-dark"])
def test_image_path_accuracy(model, size, invert):
    _, y_test = test_split()
    batch = [{"image": digit_png_base64(i, size, invert)[0]} for i in range(len(y_test))]

    predicted = labels(model.predict(batch))

    assert accuracy_score(y_test, predicted) >= IMAGE_ACCURACY


def test_smooth_upscaling_is_read_as_well(model):
    _, y_test = test_split()
    bilinear = Image.Resampling.BILINEAR
    batch = [{"image": digit_png_base64(i, (200, 150), resample=bilinear)[0]} for i in range(len(y_test))]

    assert accuracy_score(y_test, labels(model.predict(batch))) >= IMAGE_ACCURACY


@pytest.mark.parametrize("digit", range(10))
def test_specific_images_get_their_label(model, digit):
    index = FIRST_OF_CLASS[digit]
    dark, label = digit_png_base64(index)
    light, _ = digit_png_base64(index, size=(200, 150), invert=True)
    assert label == digit

    outputs = model.predict([{"image": dark}, {"image": "data:image/png;base64," + light}])

    assert [output["label"] for output in outputs] == [digit, digit]


def test_strokes_on_a_transparent_canvas(model):
    # What a browser canvas exports: opaque strokes, transparent everywhere else.
    image, label = digit_image(FIRST_OF_CLASS[3], invert=True)
    for stroke in ((0, 0, 0), (255, 255, 255)):
        canvas = Image.new("RGBA", image.size, stroke + (0,))
        canvas.putalpha(image)
        assert model.predict([{"image": png_base64(canvas)}])[0]["label"] == label


def test_jpeg_and_palette_images(model):
    image, label = digit_image(FIRST_OF_CLASS[5], size=(120, 90))
    jpeg = io.BytesIO()
    image.convert("RGB").save(jpeg, format="JPEG", quality=75)

    batch = [
        {"image": base64.b64encode(jpeg.getvalue()).decode("ascii")},
        {"image": png_base64(image.convert("P"))},
    ]

    assert labels(model.predict(batch)).tolist() == [label, label]


def test_pixels_from_image_matches_the_data_layout():
    X_test, _ = test_split()
    pixels = np.array([pixels_from_image(digit_image(i)[0]) for i in range(100)])

    assert pixels.shape == (100, 64)
    assert pixels.min() >= 0 and pixels.max() <= 16
    # Most digits come back cell for cell; the rest are shifted by half a cell at most,
    # because a crop centres the ink where the scan had it slightly off-centre.
    correlations = [np.corrcoef(p, x)[0, 1] for p, x in zip(pixels, X_test)]
    assert np.median(correlations) > 0.999
    assert np.mean(correlations) > 0.9


def test_uncropped_upscaled_sample_comes_back_exactly():
    X_test, _ = test_split()
    assert X_test[0].max() == 16  # the ink is scaled to its strongest pixel

    pixels = pixels_from_image(digit_image(0, size=(64, 64))[0], crop=False)

    np.testing.assert_allclose(pixels, X_test[0], atol=0.05)


def test_blank_image_gives_blank_pixels():
    assert pixels_from_image(Image.new("L", (32, 32), 255)) == [0.0] * 64


def test_output_shape(model):
    X_test, _ = test_split()
    image, _ = digit_png_base64(3)

    outputs = model.predict([{"pixels": X_test[0].tolist()}, {"image": image}])

    for output in outputs:
        assert set(output) == {"label", "probabilities"}
        probabilities = output["probabilities"]
        assert len(probabilities) == 10
        assert all(isinstance(p, float) and 0.0 <= p <= 1.0 for p in probabilities)
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-4)
        assert output["label"] == int(np.argmax(probabilities))
        assert isinstance(output["label"], int)
    json.dumps(outputs)  # must travel as JSON


def test_item_without_input_is_rejected(model):
    with pytest.raises(ValueError, match="neither 'pixels' nor 'image'"):
        model.predict([{"pixels": [0] * 64}, {"something": 1}])


def test_wrong_number_of_pixels_is_rejected(model):
    with pytest.raises(ValueError, match="64 values"):
        model.predict([{"pixels": [0] * 10}])


@pytest.mark.parametrize("n", [0, 1, 7, 33])
def test_batch_output_length_matches_input(model, n):
    X_test, _ = test_split()
    batch = [{"pixels": X_test[i % len(X_test)].tolist()} for i in range(n)]

    assert len(model.predict(batch)) == n
