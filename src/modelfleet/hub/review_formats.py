"""Review samples in and out of the hub (issue 9): the ``review_sample`` record check, the
exports (JSONL, Label Studio import JSON), the label imports (JSONL, Label Studio export
JSON), and the metrics of labelled samples. Pure: no I/O, no database.

**Label Studio.** An export is a list of tasks ``{"data": {...}, "meta": {"sample_id"}}``
(Label Studio's basic JSON import format; ``data`` holds the sample's fields and a ``text``
rendering for a ``<Text name="sample" value="$text"/>`` view, and ``predictions`` the model's
answer as a ``choices`` result so the annotator corrects it rather than starting blank). An
import reads Label Studio's JSON *export*: each task's ``data.sample_id`` (or
``meta.sample_id``) joins it back; the label is the first choice (``choices``), label
(``labels``), text (``textarea``) or number of the newest annotation that was not cancelled.

**Metrics.** Over labelled samples whose model answer has a class (an output decided as
``label``, else ``argmax``; ``catalog.schema.OutputDecision``): accuracy, and precision and
recall **macro-averaged** over the classes seen in the labels or the answers (a class never
predicted has precision 0, scikit-learn's ``zero_division=0``), for two classes too.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import orjson

from modelfleet.catalog.schema import OutputDecision
from modelfleet.errors import InvalidInputError
from modelfleet.telemetry.wire import parse_time

__all__ = [
    "MAX_LABEL",
    "RECORD_KIND",
    "check_sample",
    "classification_metrics",
    "label_studio_tasks",
    "parse_labels",
    "predicted_class",
    "slim",
]

#: The telemetry record kind of a review sample.
RECORD_KIND: Final = "review_sample"
#: Longest label kept.
MAX_LABEL: Final = 256
_REASONS: Final = frozenset({"anomaly", "disagreement", "drift"})
_MAX_ID: Final = 128
_BODY_KEYS: Final = ("inputs", "outputs")


def _text(value: Any, what: str, limit: int = 256) -> str:
    if not isinstance(value, str) or not value or len(value) > limit or "\x00" in value:
        raise InvalidInputError(f"{what} must be a non-empty string of at most {limit}")
    return value


def _tensors(value: Any, what: str) -> None:
    if not isinstance(value, Mapping) or not value:
        raise InvalidInputError(f"a review sample's {what} must be an object of tensors")
    for name, t in value.items():
        if (
            not isinstance(t, Mapping)
            or not isinstance(t.get("datatype"), str)
            or not isinstance(t.get("shape"), list)
            or not isinstance(t.get("data"), list)
        ):
            raise InvalidInputError(f"review sample {what} {name!r} is not a tensor")


def check_sample(record: Mapping[str, Any]) -> dict[str, Any]:
    """The review-queue columns of one ``review_sample`` record (see
    ``docs/telemetry-format.md``), checked.

    Raises:
        InvalidInputError: a field missing or malformed.
    """
    reasons = record.get("reasons")
    if (
        not isinstance(reasons, list)
        or not reasons
        or not all(isinstance(r, str) and r in _REASONS for r in reasons)
    ):
        raise InvalidInputError(f"a review sample's reasons must be some of {sorted(_REASONS)}")
    score = record.get("anomaly_score")
    if score is not None and (
        isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score)
    ):
        raise InvalidInputError("a review sample's anomaly_score must be a finite number")
    role = record.get("role")
    if role not in ("production", "candidate"):
        raise InvalidInputError("a review sample's role must be production or candidate")
    request_id = record.get("request_id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInputError("a review sample's request_id must be a string")
    for key in _BODY_KEYS:
        _tensors(record.get(key), key)
    return {
        "sample_id": _text(record.get("sample_id"), "sample_id", _MAX_ID),
        "model": _text(record.get("model"), "model"),
        "version": _text(record.get("version"), "version"),
        "role": role,
        "reasons": ",".join(sorted(set(reasons), key=reasons.index)),
        "anomaly_score": None if score is None else float(score),
        "at": parse_time(record.get("at"), "at"),
        "body": orjson.dumps(
            {
                "request_id": request_id,
                "row": record.get("row"),
                "rollout_id": record.get("rollout_id"),
                "inputs": record["inputs"],
                "outputs": record["outputs"],
            }
        ).decode(),
    }


def slim(record: Mapping[str, Any]) -> Mapping[str, Any]:
    """The record as kept among the raw telemetry records: a review sample without its
    tensors (they are stored once, in the review queue)."""
    if record.get("kind") != RECORD_KIND:
        return record
    return {k: v for k, v in record.items() if k not in _BODY_KEYS}


def predicted_class(
    outputs: Mapping[str, Any], decisions: Mapping[str, OutputDecision]
) -> str | None:
    """The class the model answered for a sample's row: the first output decided as
    ``label`` (its value), else the first decided as ``argmax`` (the top index); None when
    the model answers no class (regression)."""
    for kind in ("label", "argmax"):
        for name, decision in decisions.items():
            tensor = outputs.get(name)
            if decision.kind != kind or not isinstance(tensor, Mapping):
                continue
            data = tensor.get("data") or []
            if not data:
                continue
            if kind == "label":
                return str(data[0])
            best = max(range(len(data)), key=lambda i: data[i])
            return str(best)
    return None


def classification_metrics(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Accuracy and macro precision/recall of ``(predicted, label)`` pairs.

    Returns:
        ``{"n", "accuracy", "precision", "recall", "classes"}``; the three rates are None
        when there are no pairs.
    """
    pairs = list(pairs)
    n = len(pairs)
    classes = sorted({c for pair in pairs for c in pair})
    if not n:
        return {"n": 0, "accuracy": None, "precision": None, "recall": None, "classes": []}
    correct = sum(p == y for p, y in pairs)
    precisions, recalls = [], []
    for c in classes:
        tp = sum(p == c and y == c for p, y in pairs)
        predicted = sum(p == c for p, _ in pairs)
        actual = sum(y == c for _, y in pairs)
        precisions.append(tp / predicted if predicted else 0.0)
        recalls.append(tp / actual if actual else 0.0)
    return {
        "n": n,
        "accuracy": correct / n,
        "precision": sum(precisions) / len(classes),
        "recall": sum(recalls) / len(classes),
        "classes": classes,
    }


def _sample_text(sample: Mapping[str, Any]) -> str:
    parts = []
    for name, t in (sample.get("inputs") or {}).items():
        parts.append(f"{name} {t.get('shape')}: {orjson.dumps(t.get('data')).decode()[:2000]}")
    return "\n".join(parts)


def label_studio_tasks(samples: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Label Studio import tasks of exported samples (each from :meth:`ReviewQueue.rows`)."""
    tasks = []
    for sample in samples:
        task: dict[str, Any] = {
            "data": {**sample, "text": _sample_text(sample)},
            "meta": {"sample_id": sample["sample_id"]},
        }
        prediction = sample.get("prediction")
        if prediction is not None:
            task["predictions"] = [
                {
                    "model_version": f"{sample['model']} v{sample['version']}",
                    "result": [
                        {
                            "from_name": "label",
                            "to_name": "sample",
                            "type": "choices",
                            "value": {"choices": [prediction]},
                        }
                    ],
                }
            ]
        tasks.append(task)
    return tasks


def _value_label(value: Any) -> str | None:
    if not isinstance(value, Mapping):
        return None
    for key in ("choices", "labels", "text", "taxonomy"):
        got = value.get(key)
        if isinstance(got, list) and got:
            first = got[0]
            if isinstance(first, list) and first:  # taxonomy: a path
                first = first[-1]
            return str(first)
        if isinstance(got, str) and got:
            return got
    number = value.get("number")
    if isinstance(number, int | float) and not isinstance(number, bool):
        return str(number)
    return None


def _annotation_label(task: Mapping[str, Any]) -> str | None:
    annotations = task.get("annotations")
    if not isinstance(annotations, list):
        return None
    live = [a for a in annotations if isinstance(a, Mapping) and not a.get("was_cancelled")]
    live.sort(key=lambda a: str(a.get("updated_at") or a.get("created_at") or ""), reverse=True)
    for a in live:
        for result in a.get("result") or []:
            label = _value_label(result.get("value") if isinstance(result, Mapping) else None)
            if label is not None:
                return label
    return None


def parse_labels(body: bytes, fmt: str) -> tuple[list[tuple[str, str]], int]:
    """``[(sample_id, label), ...]`` from an import, and how many entries carried no label.

    Args:
        body: the file's bytes.
        fmt: ``"jsonl"`` (one ``{"sample_id", "label"}`` object a line) or
            ``"label-studio"`` (Label Studio's JSON export: a list of tasks).

    Raises:
        InvalidInputError: not that format, or an entry without a sample id.
    """
    out: list[tuple[str, str]] = []
    unlabelled = 0
    if fmt == "jsonl":
        for i, line in enumerate(body.splitlines(), 1):
            if not line.strip():
                continue
            try:
                doc = orjson.loads(line)
            except orjson.JSONDecodeError as e:
                raise InvalidInputError(f"line {i} is not JSON: {e}") from e
            if not isinstance(doc, Mapping):
                raise InvalidInputError(f"line {i} is not an object")
            sid = _text(doc.get("sample_id"), f"line {i}: sample_id", _MAX_ID)
            label = doc.get("label")
            if label is None or label == "":
                unlabelled += 1
                continue
            out.append((sid, _text(str(label), f"line {i}: label", MAX_LABEL)))
        return out, unlabelled
    if fmt != "label-studio":
        raise InvalidInputError(f"unknown label format {fmt!r} (jsonl or label-studio)")
    try:
        tasks = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise InvalidInputError(f"the Label Studio export is not JSON: {e}") from e
    if not isinstance(tasks, list):
        raise InvalidInputError("a Label Studio JSON export is a list of tasks")
    for i, task in enumerate(tasks):
        if not isinstance(task, Mapping):
            raise InvalidInputError(f"task {i} is not an object")
        data = task.get("data")
        meta = task.get("meta")
        raw = (data.get("sample_id") if isinstance(data, Mapping) else None) or (
            meta.get("sample_id") if isinstance(meta, Mapping) else None
        )
        sid = _text(raw, f"task {i}: data.sample_id", _MAX_ID)
        label = _annotation_label(task)
        if label is None:
            unlabelled += 1
            continue
        out.append((sid, _text(label, f"task {i}: label", MAX_LABEL)))
    return out, unlabelled
