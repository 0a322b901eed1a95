"""Sample the DNA windows the `domain` head was trained and evaluated on (provenance script).

For each collection file, windows of WINDOW bases are laid out like `titans embed --per window`
(starts 0, WINDOW, 2*WINDOW, ... in every record), windows with more than half N are dropped, and
N windows spread evenly over the whole file are kept -- the same selection as
`titans heads train --max-windows N` makes. Each kept window becomes one FASTA record named
`<record>:<start+1>-<end>`, so the sampled files are small enough to travel to a GPU machine.

    python models/heads/domain/sample_windows.py ../shared/data/dna OUT_DIR

writes OUT_DIR/{train,eval}/<collection>.fa, OUT_DIR/train.tsv and OUT_DIR/eval.tsv (labels).
Only dna/train files go into train.tsv and only dna/eval files into eval.tsv.
"""

import sys
from pathlib import Path

from titans_cli.model.tokenizers import DNATokenizer
from titans_cli.stream import sequence_records
from titans_cli.tasks.classify import _spread
from titans_cli.tasks.embed import sequence_windows
from titans_cli.tasks.heads import LabelRow
from titans_cli.tasks.classify import _sequence_lengths

WINDOW = 2000
TRAIN = [  # file, label, windows
    ("klebsiella_pneumoniae.fa.gz", "bacterium", 300),
    ("helicobacter_pylori.fa.gz", "bacterium", 300),
    ("escherichia_phages_guelin.fa.gz", "phage", 300),
    ("mycobacteriophages_train.fa.gz", "phage", 300),
    ("saccharomyces_cerevisiae_s288c.fa.gz", "fungus", 300),
    ("ustilago_maydis.fa.gz", "fungus", 300),
    ("plasmodium_falciparum.fa.gz", "protist", 600),
    ("drosophila_melanogaster_upstream2000.fa.gz", "insect", 600),
    ("homo_sapiens_chrX_0-50Mb.fa.gz", "human", 600),
]
EVAL = [
    ("escherichia_coli_k12_mg1655.fa.gz", "bacterium", 150),
    ("vibrio_cholerae_n16961.fa.gz", "bacterium", 150),
    ("staphylococcus_aureus_n315.fa.gz", "bacterium", 70),
    ("staphylococcus_aureus_usa300_fpr3757.fa.gz", "bacterium", 70),
    ("staphylococcus_aureus_jh1.fa.gz", "bacterium", 70),
    ("mycobacteriophages_eval.fa.gz", "phage", 500),
    ("homo_sapiens_chrX_60-65Mb.fa.gz", "human", 500),
]


def main(data: Path, out: Path) -> None:
    tokenizer = DNATokenizer()
    alphabet = tokenizer.id_to_char
    for split, table in (("train", TRAIN), ("eval", EVAL)):
        (out / split).mkdir(parents=True, exist_ok=True)
        labels = []
        for name, label, keep in table:
            path = data / split / name
            row = LabelRow(0, name, str(path), None, label, None)
            total = sum(-(-length // WINDOW) for length in _sequence_lengths(row))
            windows = _spread(sequence_windows(sequence_records([str(path)], tokenizer), WINDOW, WINDOW, 0.5), total, keep)
            target = out / split / name.replace(".fa.gz", ".fa")
            count = 0
            with open(target, "w") as handle:
                for window in windows:
                    tokens = next(iter(window.pieces))
                    handle.write(f">{window.id}\n{''.join(alphabet[tokens])}\n")
                    count += 1
            labels.append(f"{split}/{target.name}\t{label}\n")
            print(f"{split}\t{name}\t{label}\t{count} windows of {total}", file=sys.stderr)
        (out / f"{split}.tsv").write_text("path_or_record\tlabel\n" + "".join(labels))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
