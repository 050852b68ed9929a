"""The README's copy-paste examples, as CI runs them.

    python3 scripts/lib/readme_example.py extract LANG ADDRESS OUT
        writes the README's one ```LANG block to OUT, with the server address it shows
        (127.0.0.1:50051) replaced by ADDRESS; fails unless there is exactly one.
    python3 scripts/lib/readme_example.py verify-progress OUTPUT_FILE
        checks what the Python and Node examples print: three progress events in order
        with increasing seqs, then TASK_STATUS_COMPLETED.
"""

import pathlib
import re
import sys

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"
SHOWN_ADDRESS = "127.0.0.1:50051"


def extract(lang, address, out):
    blocks = re.findall(rf"^```{re.escape(lang)}\n(.*?)^```$", README.read_text(), re.S | re.M)
    if len(blocks) != 1:
        sys.exit(f"README.md has {len(blocks)} ```{lang} blocks, wanted exactly 1")
    code = blocks[0]
    if SHOWN_ADDRESS not in code:
        sys.exit(f"the README's ```{lang} example does not use {SHOWN_ADDRESS}")
    pathlib.Path(out).write_text(code.replace(SHOWN_ADDRESS, address))


def verify_progress(output_file):
    lines = pathlib.Path(output_file).read_text().splitlines()
    wanted = [r"(\d+) 0\.25 step 1", r"(\d+) 0\.5 step 2", r"(\d+) 0\.75 step 3", r"TASK_STATUS_COMPLETED"]
    if len(lines) != len(wanted):
        sys.exit(f"the example printed {len(lines)} lines, wanted {len(wanted)}: {lines}")
    seqs = []
    for line, pattern in zip(lines, wanted):
        m = re.fullmatch(pattern, line)
        if not m:
            sys.exit(f"the example printed {line!r}, wanted /{pattern}/; all: {lines}")
        seqs += [int(g) for g in m.groups()]
    if not seqs == sorted(set(seqs)):
        sys.exit(f"the progress seqs {seqs} do not strictly increase")
    print(f"the README example printed the 3 progress events (seqs {seqs}) and the completion")


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"extract": extract, "verify-progress": verify_progress}[command](*args)
