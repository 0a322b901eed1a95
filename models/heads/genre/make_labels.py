"""Write the labels file the `genre` head was trained from: one row per Brown Corpus document of
../shared/data/text/labeled/brown_genres.jsonl.gz, `file#id<TAB>genre<TAB>split` (the data set's own
train/test split: train on `train`, report accuracy on `test`).

    python models/heads/genre/make_labels.py ../shared/data/text/labeled/brown_genres.jsonl.gz OUT.tsv
"""

import gzip
import json
import os
import sys

source, target = sys.argv[1], sys.argv[2]
rows = ["path_or_record\tlabel\tsplit\n"]
with gzip.open(source, "rt", encoding="utf-8") as handle:
    for line in handle:
        document = json.loads(line)
        rows.append(f"{os.path.basename(source)}#{document['id']}\t{document['genre']}\t{document['split']}\n")
with open(target, "w", encoding="utf-8") as handle:
    handle.writelines(rows)
print(f"{len(rows) - 1} documents", file=sys.stderr)
