"""Each shard of a SISA folder on its own: does its adapter recite its own records?

usage: python benchmarks/sisa_shards.py --sisa runs/sisa/trained [--json FILE]

For a folder that ``benchmarks/sisa_deletion.py`` trained on the demo's records: each shard's
trained adapter, merged into the base model, continues the opening of every record greedily;
the table counts the private fields (phone, e-mail, address, ID) of the shard's own records and
of the other shards' records that the continuations reveal. Set beside the ensemble's counts, it
tells whether the shards memorised and the mean of their distributions hides it, or whether they
did not memorise at all.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
from pathlib import Path

from sisa_deletion import leaks

from unlearnlm.data.records import PRIVATE_FIELDS
from unlearnlm.demo import DemoSettings, make_data
from unlearnlm.lm.interface import LM
from unlearnlm.rundir import write_json
from unlearnlm.train.sisa import read_sisa, slice_dir


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sisa", required=True, help="a SISA folder trained on the demo's data")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    folder = Path(args.sisa)
    record, texts = read_sisa(folder)
    with tempfile.TemporaryDirectory() as scratch:  # the demo's records with their fields
        sets = make_data(Path(scratch), DemoSettings())
    people = {r["id"]: r for r in sets["forget"] + sets["keep"]}
    last = record["settings"]["slices"]
    fields = len(PRIVATE_FIELDS)
    rows = []
    for shard in range(record["settings"]["shards"]):
        own = [people[t.id] for t in texts if t.shard == shard]
        others = [people[t.id] for t in texts if t.shard != shard]
        lm = LM.load(str(slice_dir(folder, shard, last)))
        rows.append({"shard": shard, "texts": len(own), "own_leaked": leaks(lm, own),
                     "own_fields": fields * len(own), "others_leaked": leaks(lm, others),
                     "others_fields": fields * len(others)})
        del lm
        gc.collect()
    lines = ["| shard | texts | own records' fields leaked | other shards' fields leaked |",
             "|---|---|---|---|"]
    lines += [f"| {r['shard']} | {r['texts']} | {r['own_leaked']}/{r['own_fields']} | "
              f"{r['others_leaked']}/{r['others_fields']} |" for r in rows]
    print("\n".join(lines), flush=True)
    result = {"sisa": str(folder), "shards": rows}
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
