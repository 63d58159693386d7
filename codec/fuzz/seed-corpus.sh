#!/usr/bin/env bash
# Seeds the `decode` corpus with the recorded fixtures: each whole session and each single
# packet of it (so the fuzzer starts from packets of every type, at the front of its input).
set -euo pipefail
cd "$(dirname "$0")"
out=corpus/decode
mkdir -p "$out"
for f in ../tests/fixtures/*.bin; do
    name=$(basename "$f" .bin)
    cp "$f" "$out/$name"
    python3 - "$f" "$out/$name" <<'PY'
import sys
data = open(sys.argv[1], "rb").read()
i = n = 0
while i < len(data):
    start = i
    i += 1
    length = shift = 0
    while i < len(data):
        b = data[i]
        i += 1
        length |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            break
    i = min(i + length, len(data))
    open(f"{sys.argv[2]}.{n}", "wb").write(data[start:i])
    n += 1
PY
done
echo "$(ls "$out" | wc -l) seeds in codec/fuzz/$out"
