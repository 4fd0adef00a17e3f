"""Who answers a query, and the human round trip of `oracle.kind=files`.

    python -m raal.run conf=X oracle.kind=files            # runs until a round needs labels, writes the files, stops
    python -m raal.run label run_dir=DIR file=labels.csv   # or a Label Studio export (JSON, JSON-MIN, CSV)
    python -m raal.run run_dir=DIR                         # continues once the round's query is answered

`oracle`: the simulated and the files oracle; `export`: a round's queries as files to label; `imports`: people's
answers checked and added to the `ledger`, the one place labels given by people are kept; `labelstudio`: Label
Studio's formats (image references, the labeling config, the three export formats). The `label` command itself is
`raal.run.label_main`.
"""
from raal.labeling.export import EXPORT_COLUMNS, export_round
from raal.labeling.imports import MAX_LABEL_FILE_BYTES, import_bytes, import_labels, summary_lines, validate
from raal.labeling.ledger import CLASSES, LEDGER, LEDGER_SCHEMA, PARTIAL, Ledger
from raal.labeling.oracle import FilesOracle, SimulatedOracle, WaitingForLabels

__all__ = ["CLASSES", "EXPORT_COLUMNS", "LEDGER", "LEDGER_SCHEMA", "MAX_LABEL_FILE_BYTES", "PARTIAL", "FilesOracle",
           "Ledger", "SimulatedOracle", "WaitingForLabels", "export_round", "import_bytes", "import_labels",
           "summary_lines", "validate"]
