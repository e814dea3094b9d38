"""The anonymizer on a laptop: the ``anonymize`` command, the local AWS emulator, the dev
server and the evaluation against labelled sets.

None of this ships in the Lambda layer (``tools/build_layer.py --check`` asserts it). Arrows
point one way: this package uses the library (``anonymizer``) and the Lambda functions'
``functions/*/app.py``; the library never imports it.

* :mod:`.cli` — ``anonymize`` and its subcommands (one small function pair each).
* :mod:`.files` — inputs to outputs: files, folders and globs, unique output names, atomic writes.
* :mod:`.emulator` — the real Lambda functions against moto's S3/SQS/DynamoDB server (``local-run``).
* :mod:`.server` — the API function behind a local HTTP server (``serve``).
* :mod:`.evaluation` — recall, precision and AP50 against a COCO folder (``eval``).
"""
