#!/usr/bin/env bash
# Issue 15: a user classifying 40 short texts (held-out test tweets of at most 16
# tokens) with the default model over loopback, HE offline phase — once inline (5
# batches of 8, each at its own length), once after `comet-client prepare --batch 8
# --length 16 --count 5` (each batch then runs only its online phase). Each client
# call on a fresh server process, an isolated COMET_HOME (`benchmarks/lib.sh`). The
# server's store is raised to 4 GB (5 sets of 529 MB; the run recorded in
# docs/BENCHMARKS.md used the 2 GB default and kept only 3).
set -uo pipefail
# shellcheck source=benchmarks/lib.sh
. "$(dirname "$0")/lib.sh"
bench_home "${T:-/tmp/forty}"
python - "$T/texts" <<'PY'
import sys
from comet_server.adapt.data import load_tweets
from comet_server.adapt.default import default_model_dir
from transformers import PreTrainedTokenizerFast
texts, _ = load_tweets("test")
tok = PreTrainedTokenizerFast(tokenizer_file=str(default_model_dir() / "tokenizer.json"))
short = [t for t in texts if len(tok(t)["input_ids"]) <= 16 and "\n" not in t][:40]
assert len(short) == 40
open(sys.argv[1], "w").write("\n".join(short) + "\n")
PY
mapfile -t X < "$T/texts"
# SKIP_INLINE=1: only the prepared half (the inline half takes over an hour on 2 cores).
if [ -z "${SKIP_INLINE:-}" ]; then
  start inline
  t comet-client --quiet --json --server "$A" "${X[@]}" > "$T/inline.json"
  stop
fi
# SKIP_PREPARED=1: only the inline half.
if [ -z "${SKIP_PREPARED:-}" ]; then
  start prepare --prepared-bytes 4000000000
  t comet-client prepare --quiet --server "$A" --batch 8 --length 16 --count 5
  du -b "$T"/home/server/prepared/ready/* "$T"/home/prepared/ready/* >&2
  stop
  start prepared --prepared-bytes 4000000000
  t comet-client --quiet --json --server "$A" "${X[@]}" > "$T/prepared.json"
  stop
fi
python - "$T" <<'PY' >&2
import json, sys
import numpy as np
T = sys.argv[1]
import os
names = [n for n in ("inline", "prepared") if os.path.exists(f"{T}/{n}.json")]
for n in names:
    d = json.load(open(f"{T}/{n}.json")); c = d["cost"]
    print(n, "offline s", c["offline"]["seconds"], "online s", c["online"]["seconds"],
          "offline bytes", c["offline"]["bytes_sent"] + c["offline"]["bytes_received"],
          "online bytes", c["online"]["bytes_sent"] + c["online"]["bytes_received"],
          [(b["batch"], b["seq_len"], bool(b["prepared"])) for b in d["batches"]])
if len(names) < 2:
    sys.exit(0)
a, b = (json.load(open(f"{T}/{n}.json")) for n in names)
print("same labels:", a["label"] == b["label"], "labels:", a["label"])
print("max |logit diff|", float(np.abs(np.array(a["output"]) - np.array(b["output"])).max()))
PY
