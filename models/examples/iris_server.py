"""An `http` model server: iris species from four flower measurements.

Any web server can be an http model. Ferry POSTs each batch to the registered URL:

    request  {"model": "iris", "version": "1", "inputs": [{"sepal_length": 5.1, ...}, ...]}
    answer   {"outputs": [{"species": "setosa", "probabilities": {...}}, ...]}

A 4xx answer fails the batch (each input is then retried alone, so one bad input fails
alone); 429, 5xx, a timeout or a refused connection count as transient, and Ferry retries
them with backoff. Two versions are served, to show model versions:

    /v1/predict   logistic regression        /v2/predict   random forest

    python -m models.examples.iris_server --port 8100

It trains on scikit-learn's bundled iris data at start (no download, under a second).
"""
from __future__ import annotations

import argparse

from flask import Flask, jsonify, request
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")


def create_app() -> Flask:
    iris = load_iris()
    species = list(iris.target_names)
    models = {
        "v1": LogisticRegression(max_iter=1000).fit(iris.data, iris.target),
        "v2": RandomForestClassifier(n_estimators=50, random_state=0).fit(iris.data, iris.target),
    }
    app = Flask(__name__)

    @app.post("/<version>/predict")
    def predict(version: str):
        model = models.get(version)
        if model is None:
            return jsonify(error=f"no model {version}"), 404
        body = request.get_json(silent=True) or {}
        try:
            rows = [[float(item[name]) for name in FEATURES] for item in body["inputs"]]
        except (KeyError, TypeError, ValueError) as exc:
            return jsonify(error=f"each input needs {', '.join(FEATURES)}: {exc}"), 422
        outputs = []
        for probabilities in model.predict_proba(rows):
            best = int(probabilities.argmax())
            outputs.append({"species": species[best],
                            "probabilities": {name: round(float(p), 4) for name, p in zip(species, probabilities)}})
        return jsonify(outputs=outputs)

    @app.get("/health")
    def health():
        return jsonify(status="ok")

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the iris example http model.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    args = parser.parse_args()
    create_app().run(host=args.host, port=args.port, threaded=True)


if __name__ == "__main__":
    main()
